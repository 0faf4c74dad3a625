"""Capture sites and token selectors.

A site is ``(layer, role)`` resolved to a module path plus a token selector. A selector sees how many tokens the
layer output has and the batch context, and returns a ``Selection``: a contiguous token range ``[start, stop)``
(sliced on the device, so choosing tokens never synchronises the GPU) and an optional host-side keep mask that drops
padding after the copy. Built-ins: ``decision``, ``instruction``, ``full``, ``suffix``; any callable with the same
signature works. A selector also checks that the layer has the number of tokens it expects for the batch (the pad
mask's width for prefix layers, the action horizon for the expert's suffix) and raises ``SiteError`` otherwise: a
layer that is not the sequence the selector describes is refused, never read with the wrong labels.

A site also says how to read its module's output (``output_index``, ``output_key``, ``batch_first``); the recorder
checks the output against the batch before storing anything (see ``capture._outputs``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

import actstore

from ._errors import SiteError

__all__ = ["BatchContext", "Selection", "Selector", "Site", "RoleSpec", "decision", "instruction", "full", "suffix",
           "SELECTORS", "NO_STEP"]

NO_STEP = actstore.NO_STEP
"""Step written into rows of roles that are not stepped (prefix-only layers run once per forward call): the
store's own constant, re-exported."""


@dataclass
class BatchContext:
    """Per-batch facts the selectors need and the store keeps per sample (all on the CPU)."""

    sample: torch.Tensor
    """(B,) int64 global sample ids."""
    prompt_mask: torch.Tensor | None = None
    """(B, L) bool, True where the prompt has a real token (right padding)."""
    image_offset: int = 0
    """Index of the first prompt token in the prefix (n_cams * tokens_per_image)."""
    action_horizon: int | None = None
    """Number of action tokens at the end of the expert's suffix."""
    pad_mask: torch.Tensor | None = None
    """(B, P) bool prefix pad mask (False = padding or a missing camera); used by ``full``, and its width P is the
    token count ``full`` and ``instruction`` require of a layer output."""
    suffix_len: int | None = None
    """Tokens in the expert's suffix (pi0.5: the action horizon H; pi0: 1 + H with the state token); when given,
    ``decision`` and ``suffix`` require exactly this many tokens of a layer output (else at least H)."""
    prompt: list[str] | None = None
    """Prompt text per sample."""
    prompt_ids: torch.Tensor | None = None
    """(B, L) prompt token ids."""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """Other per-sample int columns, e.g. episode, frame, task (each (B,))."""

    def __post_init__(self) -> None:
        if self.sample.ndim != 1:
            raise ValueError(f"BatchContext.sample must be 1-D (B,), got shape {tuple(self.sample.shape)}")
        B = self.sample.shape[0]
        for name in ("prompt_mask", "pad_mask", "prompt_ids"):
            t = getattr(self, name)
            if t is not None and (t.ndim != 2 or t.shape[0] != B):
                raise ValueError(f"BatchContext.{name} must be (B={B}, T), got shape {tuple(t.shape)}")
        for name, t in self.extra.items():
            if t.shape != (B,):
                raise ValueError(f"BatchContext.extra[{name!r}] must have shape ({B},), got {tuple(t.shape)}")
        if self.image_offset < 0:
            raise ValueError(f"BatchContext.image_offset must be >= 0, got {self.image_offset}")
        for name in ("action_horizon", "suffix_len"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"BatchContext.{name} must be >= 1 or None, got {v}")
        if self.suffix_len is not None and self.action_horizon is not None and self.suffix_len < self.action_horizon:
            raise ValueError(f"BatchContext.suffix_len={self.suffix_len} is shorter than the action horizon "
                             f"{self.action_horizon}")
        if self.pad_mask is not None and self.prompt_mask is not None:
            P, end = int(self.pad_mask.shape[1]), self.image_offset + int(self.prompt_mask.shape[1])
            if end > P:
                raise ValueError(f"BatchContext: the prompt span [{self.image_offset}, {end}) does not fit the "
                                 f"pad mask's {P} prefix tokens")

    @property
    def batch_size(self) -> int:
        return int(self.sample.shape[0])


@dataclass(frozen=True)
class Selection:
    """Tokens ``[start, stop)`` of every sample, then (optionally) only those where ``keep_BT`` is True."""

    start: int
    """First token index (inclusive)."""
    stop: int
    """Last token index (exclusive)."""
    keep_BT: torch.Tensor | None = None
    """(B, stop - start) bool CPU mask, or None to keep every token of the range."""

    def rows(self, sample_B: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Row columns ``sample``, ``position`` (token index in the layer's sequence) and the flat keep index.

        The flat index addresses rows of the (B * (stop - start), D) copy of the range, or is None when all are kept.
        """
        B, T = int(sample_B.shape[0]), self.stop - self.start
        sample = sample_B.numpy().astype(np.int64)
        if self.keep_BT is None:
            return ({"sample": np.repeat(sample, T),
                     "position": np.tile(np.arange(self.start, self.stop, dtype=np.int64), B)}, None)
        keep = self.keep_BT.numpy().astype(bool)
        if keep.shape != (B, T):
            raise SiteError(f"selector keep mask has shape {keep.shape}; expected {(B, T)}")
        b, t = np.nonzero(keep)
        return ({"sample": sample[b], "position": (t + self.start).astype(np.int64)},
                (b * T + t).astype(np.int64))


Selector = Callable[[int, BatchContext], Selection]
"""``selector(num_tokens, ctx) -> Selection``: which tokens of a (B, num_tokens, D) layer output to store."""


def _suffix_tokens(name: str, num_tokens: int, ctx: BatchContext) -> int:
    """Check a layer output of ``num_tokens`` against the expert's suffix; returns the action horizon H."""
    H, S = ctx.action_horizon, ctx.suffix_len
    if H is None or not 0 < H <= num_tokens:
        raise SiteError(f"{name} selector needs 0 < action_horizon <= {num_tokens} tokens, got {H}")
    if S is not None and num_tokens != S:
        raise SiteError(f"{name} selector: the layer output has {num_tokens} tokens but the expert's suffix has "
                        f"BatchContext.suffix_len={S}; hook a layer of the action expert")
    return H


def decision(num_tokens: int, ctx: BatchContext) -> Selection:
    """The action tokens: the last ``ctx.action_horizon`` tokens of the expert's suffix (skips pi0's state token)."""
    H = _suffix_tokens("decision", num_tokens, ctx)
    return Selection(num_tokens - H, num_tokens)


def suffix(num_tokens: int, ctx: BatchContext) -> Selection:
    """Every token of the expert's suffix (it has no padding): pi0's state token and the action tokens."""
    _suffix_tokens("suffix", num_tokens, ctx)
    return Selection(0, num_tokens)


def _prefix_width(name: str, num_tokens: int, ctx: BatchContext) -> None:
    """A prefix layer must have exactly as many tokens as the pad mask is wide (when there is one)."""
    if ctx.pad_mask is not None and ctx.pad_mask.shape[1] != num_tokens:
        raise SiteError(
            f"{name} selector: the layer output has {num_tokens} tokens but BatchContext.pad_mask covers "
            f"{int(ctx.pad_mask.shape[1])}; hook a layer that sees the whole prefix, give a pad mask of the layer's "
            f"width (None keeps every token), or use the 'suffix' selector for the action expert")


def instruction(num_tokens: int, ctx: BatchContext) -> Selection:
    """The prompt tokens ``[image_offset, image_offset + L)`` of the prefix where the prompt mask is True."""
    if ctx.prompt_mask is None:
        raise SiteError("instruction selector needs BatchContext.prompt_mask; none was given")
    _prefix_width("instruction", num_tokens, ctx)
    L = int(ctx.prompt_mask.shape[1])
    if ctx.image_offset + L > num_tokens:
        raise SiteError(f"instruction span [{ctx.image_offset}, {ctx.image_offset + L}) does not fit a layer "
                        f"output of {num_tokens} tokens")
    return Selection(ctx.image_offset, ctx.image_offset + L, ctx.prompt_mask.bool())


def full(num_tokens: int, ctx: BatchContext) -> Selection:
    """Every non-pad token of the prefix (``ctx.pad_mask``, which must be as wide as the layer output), or every
    token when the batch has no pad mask."""
    if ctx.pad_mask is None:
        return Selection(0, num_tokens)
    _prefix_width("full", num_tokens, ctx)
    return Selection(0, num_tokens, ctx.pad_mask.bool())


SELECTORS: dict[str, Selector] = {"decision": decision, "instruction": instruction, "full": full,
                                  "suffix": suffix}
"""Built-in selectors by name."""


@dataclass(frozen=True)
class RoleSpec:
    """What a role means for one model: which decoder stack, which tokens, and whether it is stepped."""

    stack: str
    """Key into the adapter's layer-path templates, e.g. ``"vlm"`` or ``"expert"``."""
    selector: Selector
    """Token selector."""
    stepped: bool = False
    """True for the expert: its hooks fire once per denoising step and rows carry the step (else ``NO_STEP``)."""


@dataclass(frozen=True)
class Site:
    """One ``(layer, role)`` capture point resolved to a module path."""

    layer: int
    """Layer index, as stored."""
    role: str
    """Role name, as stored."""
    path: str
    """Plain module path from ``model.named_modules()``."""
    selector: Selector
    """Token selector."""
    stepped: bool = False
    """Whether the module fires once per denoising step."""
    output_index: int | None = None
    """Element of a tuple / list output (or of a ModelOutput's values) holding the (B, T, D) activations. None:
    element 0, accepted only when it is the one (B, T, .) tensor of the output."""
    output_key: str | None = None
    """Key of a dict or ModelOutput output holding the activations (applied before ``output_index``)."""
    batch_first: bool | None = None
    """False: the output is (T, B, D) and is read transposed. True: it is (B, T, D). None: (B, T, D), except that a
    module with a ``batch_first=False`` attribute on itself or a submodule (``nn.TransformerEncoderLayer``,
    ``nn.MultiheadAttention``, ``nn.LSTM``, ...) is refused until the site says which it is."""

    def __post_init__(self) -> None:
        where = f"Site(layer {self.layer}, role {self.role!r})"
        if not callable(self.selector):
            raise SiteError(f"{where}: selector must be callable (num_tokens, ctx) -> Selection, got "
                            f"{type(self.selector).__name__}")
        if self.output_index is not None and (isinstance(self.output_index, bool)
                                              or not isinstance(self.output_index, int)):
            raise SiteError(f"{where}: output_index must be an int or None, got {self.output_index!r}")
        if self.output_key is not None and (not isinstance(self.output_key, str) or not self.output_key):
            raise SiteError(f"{where}: output_key must be a non-empty str or None, got {self.output_key!r}")
        if not (self.batch_first is None or isinstance(self.batch_first, bool)):
            raise SiteError(f"{where}: batch_first must be True, False or None, got {self.batch_first!r}")


def resolve_sites(layer_paths: dict[str, str], roles: dict[str, RoleSpec], layers: list[int],
                  role_names: list[str]) -> list[Site]:
    """Sites for every ``(layer, role)`` pair, from path templates such as ``"...layers.{i}"``."""
    sites = []
    for name in role_names:
        if name not in roles:
            raise SiteError(f"no role {name!r} for this model; roles are {sorted(roles)}")
        spec = roles[name]
        for layer in layers:
            sites.append(Site(layer, name, layer_paths[spec.stack].format(i=layer), spec.selector, spec.stepped))
    return sites

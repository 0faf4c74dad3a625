"""Capture sites and token selectors.

A site is ``(layer, role)`` resolved to a module path plus a token selector. A selector sees how many tokens the
layer output has and the batch context, and returns a ``Selection``: a contiguous token range ``[start, stop)``
(sliced on the device, so choosing tokens never synchronises the GPU) and an optional host-side keep mask that drops
padding after the copy. Built-ins: ``decision``, ``instruction``, ``full``; any callable with the same signature works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ._errors import SiteError

__all__ = ["BatchContext", "Selection", "Selector", "Site", "RoleSpec", "decision", "instruction", "full",
           "SELECTORS", "NO_STEP"]

NO_STEP = -1
"""Step written into rows of roles that are not stepped (prefix-only layers run once per forward call)."""


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
    """(B, P) bool prefix pad mask (False = padding or a missing camera); used by ``full``."""
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


def decision(num_tokens: int, ctx: BatchContext) -> Selection:
    """The action tokens: the last ``ctx.action_horizon`` tokens of the expert's suffix (skips pi0's state token)."""
    H = ctx.action_horizon
    if H is None or not 0 < H <= num_tokens:
        raise SiteError(f"decision selector needs 0 < action_horizon <= {num_tokens} tokens, got {H}")
    return Selection(num_tokens - H, num_tokens)


def instruction(num_tokens: int, ctx: BatchContext) -> Selection:
    """The prompt tokens ``[image_offset, image_offset + L)`` of the prefix where the prompt mask is True."""
    if ctx.prompt_mask is None:
        raise SiteError("instruction selector needs BatchContext.prompt_mask; none was given")
    L = int(ctx.prompt_mask.shape[1])
    if ctx.image_offset + L > num_tokens:
        raise SiteError(f"instruction span [{ctx.image_offset}, {ctx.image_offset + L}) does not fit a layer "
                        f"output of {num_tokens} tokens")
    return Selection(ctx.image_offset, ctx.image_offset + L, ctx.prompt_mask.bool())


def full(num_tokens: int, ctx: BatchContext) -> Selection:
    """Every non-pad token: ``ctx.pad_mask`` when it matches the sequence length, else every token."""
    if ctx.pad_mask is not None and ctx.pad_mask.shape[1] == num_tokens:
        return Selection(0, num_tokens, ctx.pad_mask.bool())
    return Selection(0, num_tokens)


SELECTORS: dict[str, Selector] = {"decision": decision, "instruction": instruction, "full": full}
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

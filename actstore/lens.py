"""Lenses: read stored residual rows out through a model's own final norm and a *trained* head.

- :func:`velocity_lens` - decision (action-token) rows of the action expert -> the expert's final norm (AdaRMS in
  pi0.5, applied with each row's stored ``adarms`` conditioning: same sample, same denoising step) ->
  ``action_out_proj``: the velocity the row would predict if it were the last layer.
- :func:`logit_lens` - instruction rows of PaliGemma -> PaliGemma's final norm -> ``paligemma.lm_head`` (tied to the
  token embedding): top-k vocabulary ids, logits and, with a tokenizer, tokens.
- :func:`apply_lens` - the general form, by head name (:data:`HEADS`).

Which module paths hold these is a :class:`LensLayout` (``openpi`` and the built-in reference, ``lerobot`` policies
with their ``model.`` prefix, ``transformers-pi0`` whose expert has a plain RMSNorm and no AdaRMS), picked from the
model's structure by :func:`layout_for` or given explicitly.

The action expert's ``lm_head`` (``gemma_expert.lm_head``) was never trained (the JAX model has no unembedding for the expert,
the converter never fills it, training never sends it a gradient): decoding through it is refused with :class:`UntrainedHeadError` unless ``allow_untrained=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._config import ConfigError
from ._errors import UnknownKeyError
from ._reader import ActStore

__all__ = ["HEADS", "LAYOUTS", "HeadSpec", "LensLayout", "TopK", "UntrainedHeadError", "apply_lens", "layout_for",
           "logit_lens", "velocity_lens"]


class UntrainedHeadError(ConfigError):
    """A lens was asked to decode through a head that holds no trained weights (a refused option: a
    :class:`~actstore.ConfigError`, hence a ``ValueError``)."""


@dataclass(frozen=True)
class HeadSpec:
    """One readout: a final norm and a head on one stack."""

    stack: str
    """``expert`` (action expert, decision rows) or ``vlm`` (PaliGemma, instruction / prefix rows)."""
    trained: bool
    """False for heads whose weights are random in every released checkpoint."""
    about: str
    """One line on what the head reads out (and why it is untrained, if so)."""


HEADS: dict[str, HeadSpec] = {
    "action": HeadSpec("expert", True, "action_out_proj: expert width -> action dims, the trained readout of the "
                                       "expert (a velocity lens)"),
    "vlm_lm_head": HeadSpec("vlm", True, "PaliGemma lm_head, tied to the token embedding (a logit lens)"),
    "expert_lm_head": HeadSpec(
        "expert", False,
        "gemma_expert.lm_head holds random weights: the JAX pi0/pi0.5 has no unembedding for the action expert "
        "(its one embedder belongs to PaliGemma), the JAX->PyTorch converter never fills this matrix "
        "(load_state_dict(strict=False)), and flow-matching training never sends it a gradient "
        "(it is not part of the trained model). Its 'logits' are a random projection; use head='action' (velocity lens) for "
        "decision rows or head='vlm_lm_head' for instruction rows"),
}
"""Head name -> what it is and whether it is trained."""


@dataclass(frozen=True)
class LensLayout:
    """Module paths of the final norms and heads in one family of models (``None``: the model has no such head)."""

    name: str
    expert_norm: str
    """Final norm of the action expert; called ``norm(x, cond)`` when ``adaptive`` else ``norm(x)``."""
    vlm_norm: str
    """Final norm of PaliGemma's language model."""
    heads: dict[str, str | None] = field(default_factory=dict)
    """Head name (a key of ``HEADS``) -> module path (a Linear, or an Embedding used as a tied unembedding)."""
    adaptive: bool = True
    """The expert's final norm takes the AdaRMS conditioning (pi0.5); False for pi0."""
    cond: str | None = "adarms"
    """Name of the store's conditioning that feeds the adaptive norm."""


def _pi_layout(name: str, prefix: str, adaptive: bool) -> LensLayout:
    pwe = prefix + "paligemma_with_expert."
    return LensLayout(
        name, pwe + "gemma_expert.model.norm", pwe + "paligemma.model.language_model.norm",
        {"action": prefix + "action_out_proj", "vlm_lm_head": pwe + "paligemma.lm_head",
         "expert_lm_head": pwe + "gemma_expert.lm_head"},
        adaptive=adaptive, cond="adarms" if adaptive else None)


LAYOUTS: dict[str, LensLayout] = {
    "openpi": _pi_layout("openpi", "", True),
    "lerobot": _pi_layout("lerobot", "model.", True),
    "transformers-pi0": LensLayout(
        "transformers-pi0", "model.dit.norm", "model.vlm.language_model.norm",
        {"action": "action_out_proj", "vlm_lm_head": "model.vlm.language_model.embed_tokens",
         "expert_lm_head": None},
        adaptive=False, cond=None),
}
"""Known layouts. ``openpi`` also fits the built-in reference policy and lerobot's core ``PI05Pytorch``;
``lerobot`` fits a ``PI05Policy`` (which wraps the core in ``.model``)."""


def layout_for(model: nn.Module) -> LensLayout:
    """Pick the layout from the model's structure (pi0 vs pi0.5: whether the expert's final norm is adaptive)."""
    if type(model).__name__ == "PI0ForConditionalGeneration":
        return LAYOUTS["transformers-pi0"]
    if hasattr(model, "paligemma_with_expert"):
        base, prefix = LAYOUTS["openpi"], ""
    elif hasattr(getattr(model, "model", None), "paligemma_with_expert"):
        base, prefix = LAYOUTS["lerobot"], "model."
    else:
        raise UnknownKeyError(
            f"no known lens layout for {type(model).__name__}; layouts are {sorted(LAYOUTS)} - pass "
            "layout=LensLayout(...) with the module paths of the final norms and heads")
    norm = model.get_submodule(base.expert_norm)
    adaptive = getattr(norm, "dense", None) is not None
    return base if adaptive else _pi_layout(base.name + "-pi0", prefix, False)


def _module(model: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise UnknownKeyError(f"model {type(model).__name__} has no module {path!r} ({what})") from None


def _head_fn(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(module, nn.Embedding):  # tied unembedding
        return lambda x: F.linear(x, module.weight)
    return module


def _check_head(head: str, allow_untrained: bool) -> HeadSpec:
    spec = HEADS.get(head)
    if spec is None:
        raise UnknownKeyError(f"unknown head {head!r}; heads are {sorted(HEADS)}")
    if not spec.trained and not allow_untrained:
        raise UntrainedHeadError(
            f"refusing to decode through head {head!r}: {spec.about}. Pass allow_untrained=True "
            "(--allow-untrained) to do it anyway.")
    return spec


def _params(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


@torch.no_grad()
def _chunked(store: ActStore, model: nn.Module, layout: LensLayout, head: str, layer: int | str, role: str,
             step: int | Sequence[int] | None, sample: int | Sequence[int] | None, batch_rows: int,
             reduce: Callable[[torch.Tensor], Any]) -> tuple[list[Any], dict[str, np.ndarray]]:
    spec = HEADS[head]
    path = layout.heads.get(head)
    if path is None:
        raise UnknownKeyError(f"layout {layout.name!r} has no head {head!r}; it has "
                              f"{sorted(k for k, v in layout.heads.items() if v)}")
    norm = _module(model, layout.expert_norm if spec.stack == "expert" else layout.vlm_norm, "final norm")
    head_mod = _module(model, path, f"head {head!r}")
    fn = _head_fn(head_mod)
    device, dtype = _params(head_mod)
    view = store.select(layer, role, step=step, sample=sample)
    use_cond = spec.stack == "expert" and layout.adaptive
    if use_cond and layout.cond not in store.conds:
        raise UnknownKeyError(f"the {layout.name} expert's final norm is adaptive and needs the {layout.cond!r} "
                              f"conditioning, which store {store.path} does not hold; conds are {store.conds}")
    index = view.row_index
    outs = []
    for a in range(0, len(view), batch_rows):
        x = view[a:a + batch_rows].to(device=device, dtype=dtype)
        if use_cond:
            cond = store.cond(layout.cond, role=role, rows=index[a:a + batch_rows]).to(device=device, dtype=dtype)
            normed = norm(x, cond)
        else:
            normed = norm(x)
        if isinstance(normed, tuple):  # AdaRMS norms return (normed, gate); the final gate is discarded
            normed = normed[0]
        outs.append(reduce(fn(normed)))
    return outs, view.rows()


def apply_lens(store: ActStore, model: nn.Module, layer: int | str, *, role: str = "decision", head: str = "action",
               step: int | Sequence[int] | None = None, sample: int | Sequence[int] | None = None,
               layout: LensLayout | None = None, allow_untrained: bool = False,
               batch_rows: int = 4096) -> torch.Tensor:
    """Rows of ``store[layer, role]`` (optionally only ``step`` / ``sample``) -> final norm -> ``head``, in the
    head's parameter dtype on its device; shape (rows, head output). Rows are in store order (``store.select``)."""
    _check_head(head, allow_untrained)
    outs, _ = _chunked(store, model, layout or layout_for(model), head, layer, role, step, sample, batch_rows,
                       lambda y: y)
    return torch.cat(outs) if outs else torch.zeros(0)


def velocity_lens(store: ActStore, model: nn.Module, layer: int | str, step: int | Sequence[int] | None = None, *,
                  sample: int | Sequence[int] | None = None, role: str = "decision",
                  layout: LensLayout | None = None, batch_rows: int = 4096) -> torch.Tensor:
    """Decision rows at ``layer`` read out as velocities: ``action_out_proj(expert_final_norm(x, adarms_cond))``.

    Each row is normalised with the conditioning of its own (sample, denoising step). Returns (rows, action_dim),
    rows in the order of ``store.select(layer, role, step=step, sample=sample)``.
    """
    return apply_lens(store, model, layer, role=role, head="action", step=step, sample=sample, layout=layout,
                      batch_rows=batch_rows)


@dataclass
class TopK:
    """Top-k readout of some rows: ``ids`` and ``logits`` (rows, k), their ``rows`` table, ``tokens`` if decoded."""

    ids: torch.Tensor
    logits: torch.Tensor
    rows: dict[str, np.ndarray]
    tokens: list[list[str]] | None = None


def _decoder(tokenizer: Any) -> Callable[[int], str]:
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return lambda i: str(tokenizer.convert_ids_to_tokens(int(i)))
    if hasattr(tokenizer, "decode"):
        return lambda i: str(tokenizer.decode([int(i)]))
    if hasattr(tokenizer, "id_to_piece"):  # sentencepiece
        return lambda i: str(tokenizer.id_to_piece(int(i)))
    if callable(tokenizer):
        return lambda i: str(tokenizer(int(i)))
    if isinstance(tokenizer, (dict, list, tuple)):
        return lambda i: str(tokenizer[int(i)])
    raise TypeError(f"tokenizer must have convert_ids_to_tokens/decode/id_to_piece, be callable or a mapping; "
                    f"got {type(tokenizer).__name__}")


def logit_lens(store: ActStore, model: nn.Module, layer: int | str, sample: int | Sequence[int] | None = None,
               tokenizer: Any = None, k: int = 5, *, role: str = "instruction", head: str = "vlm_lm_head",
               step: int | Sequence[int] | None = None,
               layout: LensLayout | None = None, allow_untrained: bool = False, batch_rows: int = 1024) -> TopK:
    """Instruction rows at ``layer`` -> PaliGemma final norm -> ``lm_head``; the top ``k`` tokens of every row.

    ``sample`` restricts to some samples (rows in store order: by sample, then position). Only the top k of each
    row is kept, so the (rows, vocab) logits never exist at once. ``head="expert_lm_head"`` with decision rows is
    refused (untrained) unless ``allow_untrained=True``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_head(head, allow_untrained)

    def top(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vals, ids = logits.float().topk(min(k, logits.shape[-1]), dim=-1)
        return ids.cpu(), vals.cpu()

    outs, rows = _chunked(store, model, layout or layout_for(model), head, layer, role, step, sample, batch_rows, top)
    ids = torch.cat([o[0] for o in outs]) if outs else torch.zeros(0, k, dtype=torch.long)
    vals = torch.cat([o[1] for o in outs]) if outs else torch.zeros(0, k)
    tokens = None
    if tokenizer is not None:
        dec = _decoder(tokenizer)
        tokens = [[dec(i) for i in row] for row in ids.tolist()]
    return TopK(ids, vals, rows, tokens)

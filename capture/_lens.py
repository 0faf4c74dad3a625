"""Lenses: read stored residual rows out through a model's own final norm and a *trained* head.

- :func:`velocity_lens` - decision (action-token) rows of the action expert -> the expert's final norm (AdaRMS in
  pi0.5, applied with each row's stored ``adarms`` conditioning: same sample, same denoising step) ->
  ``action_out_proj``: the velocity the row would predict if it were the last layer.
- :func:`logit_lens` - instruction rows of PaliGemma -> PaliGemma's final norm -> ``paligemma.lm_head`` (tied to the
  token embedding): top-k vocabulary ids, logits and, with a tokenizer, tokens.
- :func:`apply_lens` - the general form, by head name (:data:`HEADS`).
- :func:`feature_velocity` - an SAE feature's decoder direction through the velocity lens: the action change the
  feature writes (the dashboard's readout).

Which module paths hold the norms and heads is a :class:`~capture.ModelLayout` (``capture._layouts``, shared with
the capture adapters), picked from the model's structure by :func:`~capture.layout_for` or given explicitly. Only
actstore's public reading API is used (``ActStore.select``, ``cond``, views).

The action expert's ``lm_head`` (``gemma_expert.lm_head``) was never trained (the JAX model has no unembedding for
the expert, the converter never fills it, training never sends it a gradient): decoding through it is refused with
:class:`~capture.UntrainedHeadError` unless ``allow_untrained=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from actstore import ConfigError, UnknownKeyError

from ._errors import UntrainedHeadError
from ._layouts import ModelLayout, layout_for

if TYPE_CHECKING:
    from actstore import ActStore, FeatureSet, TopExamples

__all__ = ["HEADS", "HeadSpec", "TopK", "apply_lens", "check_head", "feature_velocity", "logit_lens",
           "velocity_lens"]


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


def _module(model: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise UnknownKeyError(f"model {type(model).__name__} has no module {path!r} ({what})") from None


def _head_fn(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(module, nn.Embedding):  # tied unembedding
        return lambda x: F.linear(x, module.weight)
    return module


def check_head(head: str, allow_untrained: bool = False) -> HeadSpec:
    """The head's spec; refuses an unknown head (``UnknownKeyError``) and an untrained one unless allowed
    (:class:`~capture.UntrainedHeadError`). Cheap: call it before loading a model."""
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
def _chunked(store: ActStore, model: nn.Module, layout: ModelLayout, head: str, layer: int | str, role: str,
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
               layout: ModelLayout | None = None, allow_untrained: bool = False,
               batch_rows: int = 4096) -> torch.Tensor:
    """Rows of ``store[layer, role]`` (optionally only ``step`` / ``sample``) -> final norm -> ``head``, in the
    head's parameter dtype on its device; shape (rows, head output). Rows are in store order (``store.select``)."""
    check_head(head, allow_untrained)
    outs, _ = _chunked(store, model, layout or layout_for(model), head, layer, role, step, sample, batch_rows,
                       lambda y: y)
    return torch.cat(outs) if outs else torch.zeros(0)


def velocity_lens(store: ActStore, model: nn.Module, layer: int | str, step: int | Sequence[int] | None = None, *,
                  sample: int | Sequence[int] | None = None, role: str = "decision",
                  layout: ModelLayout | None = None, batch_rows: int = 4096) -> torch.Tensor:
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
               layout: ModelLayout | None = None, allow_untrained: bool = False, batch_rows: int = 1024) -> TopK:
    """Instruction rows at ``layer`` -> PaliGemma final norm -> ``lm_head``; the top ``k`` tokens of every row.

    ``sample`` restricts to some samples (rows in store order: by sample, then position). Only the top k of each
    row is kept, so the (rows, vocab) logits never exist at once. ``head="expert_lm_head"`` with decision rows is
    refused (untrained) unless ``allow_untrained=True``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    check_head(head, allow_untrained)

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


@torch.no_grad()
def feature_velocity(fs: FeatureSet, model: nn.Module, f: int, k: int = 8, *,
                     layout: ModelLayout | None = None) -> tuple[torch.Tensor, TopExamples]:
    """The velocity feature ``f`` writes on its ``k`` top decision rows: for each row ``x`` (activation ``a``),
    ``head(norm(x, cond)) - head(norm(x - a * W_dec[f], cond))`` with the expert's final norm, the row's own stored
    conditioning and ``action_out_proj`` (the velocity lens, :func:`velocity_lens`), i.e. the velocity with the
    feature minus the velocity with its contribution taken out. Returns ``(k, action_dim)`` float32 on the CPU and
    the examples (``fs.top(f, k)``). ``actstore.write_dashboard(..., velocity=...)`` shows it on each page."""
    if fs.role == "instruction":
        raise ConfigError(f"the velocity lens reads decision (action-expert) rows; feature group {fs.name!r} holds "
                          f"role {fs.role!r}")
    layout = layout or layout_for(model)
    norm = model.get_submodule(layout.expert_norm)
    head_path = layout.heads.get("action")
    if head_path is None:
        raise ConfigError(f"layout {layout.name!r} has no action head")
    head: Any = model.get_submodule(head_path)
    p = next(head.parameters())
    top = fs.top(f, k)
    if len(top) == 0:
        return torch.zeros(0, head.out_features), top
    x = fs.store.view(fs.layer, fs.role)[top.row].to(p.device, torch.float32)
    w = fs.sae().W_dec[int(f)].to(p.device, torch.float32)
    without = x - torch.as_tensor(top.activation, device=p.device, dtype=torch.float32)[:, None] * w

    def read(h: torch.Tensor) -> torch.Tensor:
        h = h.to(p.dtype)
        if layout.adaptive:
            cond = fs.store.cond(layout.cond, role=fs.role, rows=top.row).to(p.device, p.dtype)
            out = norm(h, cond)
        else:
            out = norm(h)
        return head(out[0] if isinstance(out, tuple) else out).float()

    return (read(x) - read(without)).cpu(), top

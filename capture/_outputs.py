"""Reading a hooked module's output as the ``(B, T, D)`` activations of a site, or refusing it loudly.

A stored row is labelled ``(sample, position)`` from the batch and the selector, so the tensor the recorder copies
must be laid out ``(B, T, D)`` with ``B`` the batch size. Accepted, after ``Site.output_key`` /
``Site.output_index`` pick an element:

- a tensor ``(B, T, D)`` (``(T, B, D)`` read transposed when the site says ``batch_first=False``);
- a tuple or list, or a Hugging Face ``ModelOutput`` (its values in order), whose element 0 is such a tensor and
  whose other elements hold no second ``(B, T, .)`` tensor (that would make element 0 a guess);
- a plain dict only through ``output_key``.

Everything else raises ``SiteOutputError`` naming the site, the module path, what was found, what was expected and
the ``Site`` option that points at the right tensor. The token count ``T`` is then checked by the selector against
the batch context (``capture._sites``).

A ``(T, B, D)`` output with ``T == B`` cannot be told from ``(B, T, D)`` by its shape, so the layout is also checked
before the model runs: a module that carries a ``batch_first=False`` attribute on itself or on a submodule
(``nn.TransformerEncoderLayer``, ``nn.MultiheadAttention``, ``nn.LSTM``, ...) is refused unless its site says
``batch_first=False`` (read transposed) or ``batch_first=True`` (the module transposes back itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._errors import SiteError, SiteOutputError
from ._sites import Selection, Site

__all__ = ["check_cond", "check_layout", "check_selection", "describe", "read_output", "where"]


def where(site: Site, module_name: str) -> str:
    """``site (layer 6, role 'full') at module 'model.layers.6' (LlamaDecoderLayer)``."""
    return f"site (layer {site.layer}, role {site.role!r}) at module {site.path!r} ({module_name})"


def describe(x: Any, depth: int = 0) -> str:
    """A short description of an output: tensor shape and dtype, container type and contents, dict keys."""
    if torch.is_tensor(x):
        return f"a {x.ndim}-D tensor of shape {tuple(x.shape)} ({x.dtype})"
    if x is None:
        return "None"
    if _is_model_output(x) or isinstance(x, Mapping):
        return f"a {type(x).__name__} with keys {list(x.keys())}"
    if isinstance(x, (tuple, list)):
        if depth:
            return f"a {type(x).__name__} of {len(x)}"
        items = ", ".join(f"[{i}] {describe(e, 1)}" for i, e in enumerate(x[:6]))
        return f"a {type(x).__name__} of {len(x)}: {items}" + (", ..." if len(x) > 6 else "")
    return f"a {type(x).__name__}"


def _is_model_output(x: Any) -> bool:
    """A transformers ``ModelOutput`` (an ordered dict whose values are also read by position), by duck typing."""
    return isinstance(x, Mapping) and callable(getattr(x, "to_tuple", None))


def _batch_first_flags(module: nn.Module) -> dict[str, bool]:
    """``batch_first`` attributes of the module and its submodules, by submodule path ('' for the module)."""
    return {name: flag for name, m in module.named_modules()
            if isinstance(flag := getattr(m, "batch_first", None), bool)}


def check_layout(site: Site, module: nn.Module) -> None:
    """Refuse, before the model runs, a site whose module may emit ``(T, B, D)`` and does not say how to read it."""
    flags = _batch_first_flags(module)
    seq_first = sorted(n or "(itself)" for n, f in flags.items() if not f)
    here = where(site, type(module).__name__)
    if site.batch_first is None and seq_first:
        raise SiteOutputError(
            f"{here} has batch_first=False on {seq_first}: its output may be (T, B, D), and with T == B that cannot "
            "be told from (B, T, D) by shape. Say how to read it: Site(..., batch_first=False) stores it "
            "transposed, Site(..., batch_first=True) if the module returns (B, T, D) anyway; or build the model "
            "with batch_first=True")
    if site.batch_first is False and flags and not seq_first:
        raise SiteOutputError(
            f"{here}: the site says batch_first=False but the module is batch-first (batch_first=True on "
            f"{sorted(n or '(itself)' for n in flags)}); drop batch_first=False from the site")


def _candidates(seq: Any, site: Site, B: int) -> list[str]:
    """Elements of a tuple / ModelOutput that are 3-D tensors with batch B (as the site reads them)."""
    if _is_model_output(seq):
        items = [(f"output_key={k!r}", v) for k, v in seq.items()]
    else:
        items = [(f"output_index={i}", v) for i, v in enumerate(seq)]
    bdim = 1 if site.batch_first is False else 0
    return [name for name, v in items if torch.is_tensor(v) and v.ndim == 3 and v.shape[bdim] == B]


def _hint(candidates: list[str]) -> str:
    if candidates:
        return "point the site at the hidden states with Site(..., " + " or ".join(candidates) + ")"
    return "no element is a (B, T, D) tensor; hook the module that returns the hidden states"


def _as_BTD(x: Any, site: Site, B: int, here: str, found_in: str, hint: str) -> torch.Tensor:
    """Check ``x`` is a floating ``(B, T, D)`` tensor in the site's layout; returns it batch-first."""
    seq_first = site.batch_first is False
    expected = f"expected a {'(T, B, D) (batch_first=False)' if seq_first else f'(B={B}, T, D)'} floating tensor"
    found = describe(x)

    def fail(why: str, fix: str = hint) -> SiteOutputError:
        return SiteOutputError(f"{here}: {found_in} is {found}; {expected}{why}; {fix}")

    if not torch.is_tensor(x):
        raise fail("")
    if not (x.is_floating_point() or x.is_complex()):
        raise fail(" of activations, not integer or bool values")
    if x.ndim == 2:
        raise fail(": a 2-D output has no token axis (pooled or per-sample)",
                   "hook a module before the pooling, or one whose output keeps the tokens")
    if x.ndim == 4:
        raise fail(": a 4-D tensor looks like attention probabilities (B, heads, T, T) or per-head states")
    if x.ndim != 3:
        raise fail("")
    if seq_first:
        x = x.transpose(0, 1)
    if x.shape[0] != B:
        if not seq_first and x.shape[1] == B:
            raise fail(f", but the batch size {B} is dim 1: this looks sequence-first (T, B, D)",
                       "if the module is sequence-first declare Site(..., batch_first=False)")
        raise fail(f": the batch dim ({1 if seq_first else 0}) is {x.shape[0]}, not the batch size {B}",
                   "rows are labelled per sample of the batch given to rec.batch(); hook a module that runs on that "
                   "batch (not one doubled for guidance or split into chunks)")
    return x


def read_output(output: Any, site: Site, module_name: str, B: int) -> torch.Tensor:
    """The site's activations in ``output`` as a ``(B, T, D)`` tensor (a view, possibly transposed), or raise."""
    here = where(site, module_name)
    x, found_in = output, "the output"
    if site.output_key is not None:
        key = site.output_key
        if not isinstance(x, Mapping):
            raise SiteOutputError(f"{here}: the site has output_key={key!r} but the module returned "
                                  f"{describe(x)}, not a dict or ModelOutput; drop output_key")
        if key not in x:
            raise SiteOutputError(f"{here}: the output has no key {key!r} (a None field is absent from a "
                                  f"ModelOutput); keys are {list(x.keys())}")
        x, found_in = x[key], f"output[{key!r}]"
    if site.output_index is not None:
        i = site.output_index
        seq = tuple(x.to_tuple()) if _is_model_output(x) else x
        if not isinstance(seq, (tuple, list)):
            raise SiteOutputError(f"{here}: the site has output_index={i} but {found_in} is {describe(x)}, not a "
                                  "tuple, list or ModelOutput; drop output_index")
        if not -len(seq) <= i < len(seq):
            raise SiteOutputError(f"{here}: output_index={i} is out of range for {found_in}, {describe(x)}")
        return _as_BTD(seq[i], site, B, here, f"{found_in}[{i}]", _hint(_candidates(seq, site, B)))
    if site.output_key is not None:
        return _as_BTD(x, site, B, here, found_in, "point output_key at a (B, T, D) tensor")
    if x is None:
        raise SiteOutputError(f"{here}: the module returned None; expected a (B={B}, T, D) tensor. Hook a module "
                              "that returns the hidden states (not one that works in place)")
    if isinstance(x, Mapping) and not _is_model_output(x):
        raise SiteOutputError(f"{here}: the module returned {describe(x)}; a dict has no first element: "
                              "give Site(..., output_key=K) with "
                              f"K one of {list(x.keys())}")
    if not (_is_model_output(x) or isinstance(x, (tuple, list))):
        return _as_BTD(x, site, B, here, "the output", "hook the module that returns the hidden states")
    seq = tuple(x.to_tuple()) if _is_model_output(x) else tuple(x)
    cands = _candidates(x if _is_model_output(x) else seq, site, B)
    if not seq:
        raise SiteOutputError(f"{here}: the module returned an empty {type(x).__name__}; expected a (B={B}, T, D) "
                              "tensor or a tuple starting with one")
    first = "output_key=" + repr(next(iter(x.keys()))) if _is_model_output(x) else "output_index=0"
    acts = _as_BTD(seq[0], site, B, here, f"element 0 of the output ({describe(x)})", _hint(cands))
    T = acts.shape[1]
    bdim = 1 if site.batch_first is False else 0
    rivals = [i for i, e in enumerate(seq[1:], 1) if torch.is_tensor(e) and e.ndim == 3
              and e.shape[bdim] == B and e.shape[1 - bdim] == T]
    if rivals:
        raise SiteOutputError(
            f"{here}: the module returned {describe(x)}; element 0 and element(s) {rivals} are all (B={B}, T={T}, .) "
            f"tensors, so which holds the hidden states is a guess; say which with Site(..., {' or '.join(cands)})"
            f" (element 0: {first})")
    return acts


def check_cond(cond: Any, kwarg: str, path: str, B: int) -> torch.Tensor:
    """The conditioning keyword of a stepped layer as a ``(B, C)`` tensor, or raise."""
    ok = torch.is_tensor(cond) and cond.is_floating_point() and cond.shape[:1] == (B,) and (
        cond.ndim == 2 or (cond.ndim == 3 and cond.shape[1] == 1))
    if not ok:
        raise SiteOutputError(
            f"keyword {kwarg!r} of module {path!r} is {describe(cond)}; expected a (B={B}, C) floating tensor "
            "(one conditioning vector per sample). Set RecorderConfig.cond_kwarg to the keyword that carries it, "
            "or cond_kwarg=None to capture no conditioning")
    return cond.reshape(B, -1)


def check_selection(sel: Any, T: int, B: int) -> None:
    """A selector's answer must be a ``Selection`` inside the layer's ``T`` tokens (a range past the end would be
    cut by slicing while the row labels still count it)."""
    if not isinstance(sel, Selection):
        raise SiteError(f"the selector returned {describe(sel)}, not a Selection")
    if not 0 <= sel.start <= sel.stop <= T:
        raise SiteError(f"the selector chose tokens [{sel.start}, {sel.stop}), outside the layer's {T} tokens")
    if sel.keep_BT is not None and tuple(sel.keep_BT.shape) != (B, sel.stop - sel.start):
        raise SiteError(f"the selector's keep mask has shape {tuple(sel.keep_BT.shape)}; expected "
                        f"{(B, sel.stop - sel.start)}")

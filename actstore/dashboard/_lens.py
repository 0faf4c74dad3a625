"""The decoder direction of a feature read through the velocity lens: the action change the feature writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._config import ConfigError
from ..lens import LensLayout, layout_for

if TYPE_CHECKING:
    from .._features import FeatureSet, TopExamples

__all__ = ["feature_velocity"]


@torch.no_grad()
def feature_velocity(fs: FeatureSet, model: nn.Module, f: int, k: int = 8, *,
                     layout: LensLayout | None = None) -> tuple[torch.Tensor, TopExamples]:
    """The velocity feature ``f`` writes on its ``k`` top decision rows: for each row ``x`` (activation ``a``),
    ``head(norm(x, cond)) - head(norm(x - a * W_dec[f], cond))`` with the expert's final norm, the row's own stored
    conditioning and ``action_out_proj`` (the velocity lens, :func:`actstore.lens.velocity_lens`), i.e. the
    velocity with the feature minus the velocity with its contribution taken out. Returns ``(k, action_dim)``
    float32 on the CPU and the examples (``fs.top(f, k)``)."""
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

"""Interventions on a policy's residual stream along SAE features (steering), and their effect on the actions.

:func:`steering` is a context manager that hooks one layer (the module path the capture adapter gives for a
``(layer, role)``) and, on the role's tokens (``decision``: the action tokens of the expert's suffix;
``instruction``: the prompt tokens of the prefix) at the chosen denoising steps, rewrites the layer's output ``x``:

- ``mode="add"``: ``x + value * W_dec[f]`` (``value`` is the steering coefficient alpha);
- ``mode="clamp"``: ``x + (value - z_f(x)) * W_dec[f]``, with ``z_f(x)`` feature ``f``'s SAE code of ``x``: the
  feature is set to ``value`` and the SAE's reconstruction error is kept (``value`` a float, or a tensor that
  broadcasts to the selected tokens ``(B, T)``).

``value = 0`` with ``add``, and a clamp to the feature's own value, change nothing: ``x + 0 * w`` is ``x`` bit for bit.
The hook is removed in ``finally``. :func:`steer_actions` runs the model twice on the same observation, hence the
same flow-matching noise (``obs.noise``), once plain and once steered, and reports the change of the action chunk.

Stepped roles count the hooked module's calls inside the block as denoising steps 0, 1, ... (one call per step, as
the capture recorder does); the prefix runs once, so ``steps`` must be None for ``instruction``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ._adapters import ModelAdapter, adapter_for
from ._errors import CaptureConfigError, SiteError
from ._sites import BatchContext
from ._synthetic import Observation

__all__ = ["SteerLog", "SteerResult", "SteerSpec", "steer_actions", "steering"]


@dataclass(frozen=True)
class SteerSpec:
    """One intervention: which feature, how, where."""

    layer: int
    """Layer whose output (the residual stream after it) is rewritten."""
    feature: int
    """SAE feature ``f``; its decoder row ``W_dec[f]`` is the direction."""
    value: float | torch.Tensor = 0.0
    """add: the coefficient alpha; clamp: the activation the feature is set to (float, or a tensor broadcasting to
    the selected tokens (B, T))."""
    mode: Literal["add", "clamp"] = "add"
    """add alpha * W_dec[f], or clamp the feature's code to ``value``."""
    role: str = "decision"
    """Which tokens: a role of the model's adapter (decision: action tokens; instruction: prompt tokens)."""
    steps: tuple[int, ...] | None = None
    """Denoising steps to intervene at (None: every call of the layer)."""

    def __post_init__(self) -> None:
        if self.mode not in ("add", "clamp"):
            raise CaptureConfigError(f"steering mode {self.mode!r} is not known; modes are 'add', 'clamp'")
        if self.layer < 0 or self.feature < 0:
            raise CaptureConfigError(f"layer and feature must be >= 0, got layer={self.layer}, "
                                     f"feature={self.feature}")
        if self.steps is not None and any(s < 0 for s in self.steps):
            raise CaptureConfigError(f"steps must be >= 0, got {self.steps}")


@dataclass
class SteerLog:
    """What the hook saw, one entry per intervened call."""

    step: list[int] = field(default_factory=list)
    """Denoising step of each intervention (-1 for an unstepped role)."""
    code: list[torch.Tensor] = field(default_factory=list)
    """Feature ``f``'s SAE code of the selected tokens before the intervention, (B, T) float32 on the CPU."""
    resid: list[torch.Tensor] = field(default_factory=list)
    """The selected tokens' residual before the intervention, (B, T, D) float32 on the CPU."""
    cond: list[torch.Tensor | None] = field(default_factory=list)
    """The layer's conditioning keyword (``adarms_cond``) of the call, (B, C), or None."""
    delta_norm: list[float] = field(default_factory=list)
    """L2 norm of the change written into the residual."""


@dataclass
class SteerResult:
    """Actions of an unsteered and a steered run with the same noise."""

    actions: torch.Tensor
    """Unsteered action chunk (B, H, action_dim)."""
    steered: torch.Tensor
    """Steered action chunk."""
    log: SteerLog

    @property
    def delta(self) -> torch.Tensor:
        """``steered - actions``."""
        return self.steered - self.actions


def _decoder_row(sae: Any, f: int) -> torch.Tensor:
    W = getattr(sae, "W_dec", None)
    if W is None:
        raise CaptureConfigError(f"the SAE ({type(sae).__name__}) has no W_dec (features x width)")
    if not 0 <= f < W.shape[0]:
        raise CaptureConfigError(f"no feature {f} in the SAE; features are 0..{W.shape[0] - 1}")
    return W[f].detach()


def _hidden(output: Any, path: str) -> tuple[torch.Tensor, Any]:
    """The (B, T, D) hidden states of a layer output and a function putting a replacement back."""
    if isinstance(output, torch.Tensor):
        return output, lambda h: h
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0], lambda h: type(output)((h, *output[1:]))
    raise SiteError(f"cannot steer module {path!r}: its output is {type(output).__name__}, expected a (B, T, D) "
                    "tensor or a tuple whose element 0 is one")


@contextmanager
def steering(model: nn.Module, sae: Any, spec: SteerSpec, ctx: BatchContext, *,
             adapter: ModelAdapter | None = None, record: bool = False) -> Iterator[SteerLog]:
    """Rewrite ``spec.layer``'s output on ``spec.role``'s tokens while the block runs (see the module doc).

    ``sae`` has ``W_dec`` (features, width) and, for ``clamp``, ``encode(x) -> codes`` (an
    :func:`actstore.load_sae` SAE, ``FeatureSet.sae()``, or a trained ``TopKSAE``). ``ctx`` is the
    batch's context (``adapter.context(model, obs)``), which the role's token selector reads. ``record`` keeps the
    selected residuals and conditioning in the log (for lens comparisons)."""
    adapter = adapter or adapter_for(model)
    if spec.role not in adapter.roles:
        raise CaptureConfigError(f"no role {spec.role!r} for model {adapter.name}; roles are {sorted(adapter.roles)}")
    role = adapter.roles[spec.role]
    if spec.steps is not None and not role.stepped:
        raise CaptureConfigError(f"role {spec.role!r} runs once per forward (no denoising steps); leave steps=None")
    path = adapter.layer_paths[role.stack].format(i=spec.layer)
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise CaptureConfigError(f"model {type(model).__name__} has no module {path!r} (layer {spec.layer}, role "
                                 f"{spec.role!r})") from None
    w = _decoder_row(sae, spec.feature)
    if spec.mode == "clamp" and not callable(getattr(sae, "encode", None)):
        raise CaptureConfigError("clamp needs an SAE with encode(x) -> codes")
    log = SteerLog()
    calls = [0]
    value = spec.value

    def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        step = calls[0] if role.stepped else -1
        calls[0] += 1
        if spec.steps is not None and step not in spec.steps:
            return None
        h, put = _hidden(output, path)
        if h.ndim != 3 or h.shape[-1] != w.shape[0]:
            raise SiteError(f"module {path!r} output has shape {tuple(h.shape)}; the SAE's directions have width "
                            f"{w.shape[0]}")
        sel = role.selector(int(h.shape[1]), ctx)
        x = h[:, sel.start:sel.stop]
        wx = w.to(h.device, h.dtype)
        with torch.no_grad():
            z = sae.encode(x.reshape(-1, x.shape[-1]).float())[:, spec.feature].reshape(x.shape[:2]).float()
            coef = torch.as_tensor(value, dtype=torch.float32, device=h.device)
            coef = (coef - z) if spec.mode == "clamp" else coef.expand_as(z)
            if sel.keep_BT is not None:
                coef = coef * sel.keep_BT.to(coef.device)
            delta = coef.to(h.dtype)[..., None] * wx
            out = h.clone()
            out[:, sel.start:sel.stop] = x + delta
        log.step.append(step)
        log.code.append(z.cpu())
        log.delta_norm.append(float(delta.float().norm()))
        if record:
            log.resid.append(x.detach().float().cpu())
            cond = kwargs.get(adapter.cond_kwarg) if adapter.cond_kwarg else None
            log.cond.append(cond.detach().cpu() if isinstance(cond, torch.Tensor) else None)
        return put(out)

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield log
    finally:
        handle.remove()


def steer_actions(model: nn.Module, obs: Observation, sae: Any, spec: SteerSpec, *, num_steps: int = 10,
                  adapter: ModelAdapter | None = None, record: bool = False) -> SteerResult:
    """Run ``obs`` through ``model`` plain and steered (same ``obs.noise``); the actions of both and the log."""
    adapter = adapter or adapter_for(model)
    ctx = adapter.context(model, obs)
    with torch.no_grad():
        base = adapter.run(model, obs, num_steps)
        with steering(model, sae, spec, ctx, adapter=adapter, record=record) as log:
            steered = adapter.run(model, obs, num_steps)
    if not isinstance(base, torch.Tensor):
        raise SiteError(f"model {type(model).__name__} returned {type(base).__name__}, not an action tensor")
    if not log.step:
        raise CaptureConfigError(f"the steering hook never fired at layer {spec.layer}, role {spec.role!r}, steps "
                                 f"{spec.steps} (num_steps={num_steps})")
    return SteerResult(base, steered, log)

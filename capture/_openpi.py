"""Build openpi's ``PI0Pytorch`` from the files openpi's converter writes: ``model.safetensors`` + ``config.json``.

``examples/convert_jax_model_to_pytorch.py`` (openpi) saves the weights with ``safetensors.torch.save_model`` and
a ``config.json`` of ``action_dim``, ``action_horizon``, ``paligemma_variant``, ``action_expert_variant`` and
``precision``; whether the model is pi0.5 is not in it, but the weights tell (pi0.5 has ``time_mlp_in``). Without a
``config.json`` the pi0.5 LIBERO model is assumed (openpi's ``pi05_libero``: gemma_2b + gemma_300m, horizon 10).
The model is built from openpi's own ``Pi0Config`` when it imports (it needs jax), else from a dataclass with the
attributes ``PI0Pytorch`` reads; ``torch.compile`` is off (hooks with side effects break compiled graphs). The
weights are loaded with ``safetensors.torch.load_model`` (strict), as openpi's ``load_pytorch`` does.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from ._errors import ModelSpecError

__all__ = ["OpenpiConfig", "PI05_LIBERO", "openpi_checkpoint", "build_openpi"]


@dataclasses.dataclass(frozen=True)
class OpenpiConfig:
    """The fields of openpi's ``Pi0Config`` that ``PI0Pytorch`` reads."""

    pi05: bool = True
    """pi0.5 (AdaRMS time conditioning, discrete state in the prompt) or pi0."""
    paligemma_variant: str = "gemma_2b"
    """openpi gemma variant of the VLM."""
    action_expert_variant: str = "gemma_300m"
    """openpi gemma variant of the action expert."""
    dtype: str = "float32"
    """Precision the model is built in (capture casts afterwards, as upstream does)."""
    action_dim: int = 32
    """Width of an action vector (openpi pads to 32)."""
    action_horizon: int = 10
    """Action tokens per chunk (pi05_libero: 10)."""
    max_token_len: int = 200
    """Prompt length (pi0.5: 200, pi0: 48)."""
    pytorch_compile_mode: str | None = None
    """Always None for capture."""


PI05_LIBERO = OpenpiConfig()
"""openpi's ``pi05_libero`` model config."""


def openpi_checkpoint(path: str) -> tuple[Path, dict[str, Any]]:
    """The weights file and its converter ``config.json`` (empty when absent) for a file or directory path."""
    p = Path(path)
    weights = p / "model.safetensors" if p.is_dir() else p
    if not weights.is_file():
        raise ModelSpecError(f"--checkpoint-path {path!r}: no such file; model 'openpi' needs the model.safetensors "
                             "written by openpi's convert_jax_model_to_pytorch.py (or its directory)")
    if weights.suffix != ".safetensors":
        raise ModelSpecError(f"--checkpoint-path {path!r}: expected a .safetensors file (openpi's model.safetensors)")
    cfg_file = weights.parent / "config.json"
    if not cfg_file.is_file():
        return weights, {}
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelSpecError(f"{cfg_file}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise ModelSpecError(f"{cfg_file}: expected a JSON object, got {type(cfg).__name__}")
    return weights, cfg


def _config(weights: Path, cfg: dict[str, Any]) -> OpenpiConfig:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())
        action_dim = f.get_slice("action_in_proj.weight").get_shape()[1] if "action_in_proj.weight" in keys else None
    if action_dim is None:
        raise ModelSpecError(f"{weights}: no 'action_in_proj.weight'; this is not an openpi PI0Pytorch state dict")
    pi05 = "time_mlp_in.weight" in keys
    if not cfg:
        warnings.warn(f"{weights.parent}/config.json not found: building openpi's pi05_libero model "
                      f"(gemma_2b + gemma_300m, action_horizon {PI05_LIBERO.action_horizon})", stacklevel=3)
    fields = {f.name for f in dataclasses.fields(OpenpiConfig)}
    unknown = sorted(set(cfg) - fields - {"precision"})
    if unknown:
        raise ModelSpecError(f"{weights.parent}/config.json: unknown keys {unknown}; known: {sorted(fields)}")
    kw = {k: v for k, v in cfg.items() if k in fields and k != "dtype"}
    kw.setdefault("max_token_len", 200 if pi05 else 48)
    if int(kw.get("action_dim", action_dim)) != action_dim:
        raise ModelSpecError(f"{weights.parent}/config.json says action_dim {kw['action_dim']} but the weights have "
                             f"{action_dim}")
    return OpenpiConfig(**{**kw, "pi05": pi05, "action_dim": action_dim})


def _pi0_config(c: OpenpiConfig) -> Any:
    """openpi's own ``Pi0Config`` when importable (it needs jax / flax), else ``c`` itself."""
    try:
        from openpi.models.pi0_config import Pi0Config
    except ImportError:
        return c
    return Pi0Config(**dataclasses.asdict(c))


def build_openpi(path: str) -> nn.Module:
    """``PI0Pytorch`` built from the converter's config and loaded (strictly) from ``model.safetensors``."""
    weights, cfg = openpi_checkpoint(path)
    config = _config(weights, cfg)
    try:
        from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
    except ImportError as e:
        raise ModelSpecError(f"model 'openpi' needs openpi's PyTorch model importable (openpi.models_pytorch): {e}") from e
    import safetensors.torch

    model = PI0Pytorch(_pi0_config(config))
    try:
        safetensors.torch.load_model(model, str(weights), strict=True)
    except RuntimeError as e:
        raise ModelSpecError(f"{weights} does not match the openpi model built from "
                             f"{weights.parent / 'config.json'} ({dict(cfg) or 'pi05_libero defaults'}): {e}") from e
    return model.eval()

"""Capture activations of pi0 / pi0.5 policies (or any torch model) into an actstore store.

``Recorder`` hooks plain module paths and streams the selected tokens into an ``actstore.StoreWriter``;
``ReferencePi05`` is a small random pi0.5 with openpi's layout; ``capture_run`` / ``RunConfig`` are the CLI as a
function. ``LAYOUTS`` is the one table of where each model family keeps its layers, final norms and heads; the
lenses (``velocity_lens``, ``logit_lens``, ``apply_lens``, ``feature_velocity``) read stored rows out through them,
and ``recorded_model`` rebuilds the model a store was captured from (the ``actstore lens`` command uses these).
capture uses only actstore's public API. ``import capture`` is cheap: the error classes and configs at once,
everything that needs torch on first use, so ``python -m capture --help`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._cli_config import CaptureConfig, InputConfig, ModelConfig, OutputConfig, RunConfig
from ._errors import CaptureConfigError, CaptureError, ModelSpecError, SiteError, UntrainedHeadError

if TYPE_CHECKING:
    from ._adapters import MODELS, ModelAdapter, ModelSpec, adapter_for, load_model, recorded_model
    from ._layouts import LAYOUTS, ModelLayout, layout_for
    from ._lens import (
        HEADS,
        HeadSpec,
        TopK,
        apply_lens,
        check_head,
        feature_velocity,
        logit_lens,
        velocity_lens,
    )
    from ._recorder import Recorder, RecorderConfig
    from ._reference import AdaRMSNorm, ReferenceConfig, ReferencePi05
    from ._run import capture_run, run
    from ._sites import (
        NO_STEP,
        SELECTORS,
        BatchContext,
        RoleSpec,
        Selection,
        Site,
        decision,
        full,
        instruction,
    )
    from ._steer import SteerLog, SteerResult, SteerSpec, steer_actions, steering
    from ._synthetic import (
        LIBERO_TASKS,
        Observation,
        SyntheticConfig,
        make_batch,
        synthetic_batches,
        tokenize,
    )

_LAZY: dict[str, str] = {
    **dict.fromkeys(("MODELS", "ModelAdapter", "ModelSpec", "adapter_for", "load_model", "recorded_model"),
                    "._adapters"),
    **dict.fromkeys(("LAYOUTS", "ModelLayout", "layout_for"), "._layouts"),
    **dict.fromkeys(("HEADS", "HeadSpec", "TopK", "apply_lens", "check_head", "feature_velocity", "logit_lens",
                     "velocity_lens"), "._lens"),
    **dict.fromkeys(("Recorder", "RecorderConfig"), "._recorder"),
    **dict.fromkeys(("AdaRMSNorm", "ReferenceConfig", "ReferencePi05"), "._reference"),
    **dict.fromkeys(("capture_run", "run"), "._run"),
    **dict.fromkeys(("SteerLog", "SteerResult", "SteerSpec", "steer_actions", "steering"), "._steer"),
    **dict.fromkeys(("NO_STEP", "SELECTORS", "BatchContext", "RoleSpec", "Selection", "Site", "decision", "full",
                     "instruction"), "._sites"),
    **dict.fromkeys(("LIBERO_TASKS", "Observation", "SyntheticConfig", "make_batch", "synthetic_batches",
                     "tokenize"), "._synthetic"),
    # test fixtures, reachable for tests but not public (not in __all__)
    **dict.fromkeys(("TinyPI0Config", "build_tiny_pi0"), "._transformers_pi0"),
}
"""Name -> private module, imported on first access (PEP 562)."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'capture' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "HEADS", "LAYOUTS", "LIBERO_TASKS", "MODELS", "NO_STEP", "SELECTORS",
    "AdaRMSNorm", "BatchContext", "CaptureConfig", "CaptureConfigError", "CaptureError", "HeadSpec", "InputConfig",
    "ModelAdapter", "ModelConfig", "ModelLayout", "ModelSpec", "ModelSpecError", "Observation", "OutputConfig",
    "Recorder", "RecorderConfig", "ReferenceConfig", "ReferencePi05", "RoleSpec", "RunConfig", "Selection", "Site",
    "SiteError", "SyntheticConfig", "TopK", "UntrainedHeadError",
    "SteerLog", "SteerResult", "SteerSpec", "steer_actions", "steering",
    "adapter_for", "apply_lens", "capture_run", "check_head", "decision", "feature_velocity", "full", "instruction",
    "layout_for", "load_model", "logit_lens", "make_batch", "recorded_model", "run", "synthetic_batches",
    "tokenize", "velocity_lens",
]

"""Capture activations of pi0 / pi0.5 policies (or any torch model) into an actstore store.

``Recorder`` hooks plain module paths and streams the selected tokens into an ``actstore.StoreWriter``;
``ReferencePi05`` is a small random pi0.5 with openpi's layout; ``capture_run`` is the CLI as a function.
"""

from ._adapters import MODELS, ModelAdapter, ModelSpec, adapter_for, load_model
from ._cli import capture_run
from ._errors import CaptureError, ModelSpecError, SiteError
from ._recorder import Recorder, RecorderConfig
from ._reference import AdaRMSNorm, ReferenceConfig, ReferencePi05
from ._sites import NO_STEP, SELECTORS, BatchContext, RoleSpec, Selection, Site, decision, full, instruction
from ._synthetic import LIBERO_TASKS, Observation, SyntheticConfig, make_batch, synthetic_batches, tokenize
from ._transformers_pi0 import TinyPI0Config, build_tiny_pi0

__all__ = [
    "MODELS", "NO_STEP", "SELECTORS", "LIBERO_TASKS",
    "AdaRMSNorm", "BatchContext", "CaptureError", "ModelAdapter", "ModelSpec", "ModelSpecError", "Observation",
    "Recorder", "RecorderConfig", "ReferenceConfig", "ReferencePi05", "RoleSpec", "Selection", "Site", "SiteError",
    "SyntheticConfig", "TinyPI0Config",
    "adapter_for", "build_tiny_pi0", "capture_run", "decision", "full", "instruction", "load_model", "make_batch",
    "synthetic_batches", "tokenize",
]

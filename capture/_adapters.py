"""Model adapters: where a model's layers live, what its roles mean, how to run one batch through it.

Registry (``MODELS``): ``reference`` (built-in random pi0.5), ``transformers-pi0`` (transformers' own PI0, tiny
random unless a checkpoint is given), ``openpi`` / ``lerobot`` (need those packages), ``factory`` (any
``module:function`` returning a model). ``adapter_for(model)`` picks the adapter from the model's structure, so a
factory that returns an openpi ``PI0Pytorch`` or a lerobot ``PI05Policy`` gets the pi0 adapter automatically.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._errors import ModelSpecError
from ._layouts import LAYOUTS, ModelLayout, family_layout
from ._pi import cast_like_upstream, pi_adapter_parts, pi_core
from ._reference import ReferenceConfig, ReferencePi05
from ._sites import BatchContext, RoleSpec, Site, decision, full, instruction, resolve_sites
from ._synthetic import Observation

__all__ = ["ModelAdapter", "ModelSpec", "MODELS", "load_model", "adapter_for", "load_callable", "recorded_model"]

@dataclass(frozen=True)
class ModelAdapter:
    """Everything the recorder and the CLI need to know about one family of models."""

    name: str
    """Adapter name (stored in the run's attrs)."""
    layer_paths: dict[str, str]
    """Decoder stack -> module path template with ``{i}`` for the layer index."""
    roles: dict[str, RoleSpec]
    """Role name -> stack, selector, stepped."""
    run: Callable[[nn.Module, Observation, int], Any]
    """``run(model, obs, num_steps)``: one model call on a batch."""
    context: Callable[[nn.Module, Observation], BatchContext]
    """``context(model, obs)``: the per-batch context the selectors and the store need."""
    cond_kwarg: str | None = None
    """Keyword of the expert layers' forward carrying the conditioning (``adarms_cond`` for pi0.5)."""

    def sites(self, layers: list[int], roles: list[str]) -> list[Site]:
        """Sites for every ``(layer, role)`` pair."""
        return resolve_sites(self.layer_paths, self.roles, layers, roles)


@dataclass(frozen=True)
class ModelSpec:
    """Which model to capture from."""

    name: str = "reference"
    """One of ``MODELS``: reference, transformers-pi0, openpi, lerobot, factory."""
    checkpoint_path: str | None = None
    """Weights to load (a .safetensors / .pt state dict for reference; a directory for transformers / lerobot)."""
    factory: str | None = None
    """``module:function`` called as ``fn(checkpoint_path, seed)`` returning a model or ``(model, ModelAdapter)``."""
    layer_path: str = "model.layers.{i}"
    """For a factory model with no known structure: decoder layer path template."""
    seed: int = 0
    """Seed of random initialisation (reference and tiny models)."""
    device: str = "cpu"
    """Device to run on."""
    dtype: str = "float32"
    """Parameter dtype: float32, bfloat16 or float16."""

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ModelSpecError(f"unknown model {self.name!r}; models are {sorted(MODELS)}")
        if self.name == "factory" and not self.factory:
            raise ModelSpecError("model 'factory' needs factory='module:function'")
        if self.dtype not in _DTYPES:
            raise ModelSpecError(f"unknown dtype {self.dtype!r}; dtypes are {sorted(_DTYPES)}")
        if "{i}" not in self.layer_path:
            raise ModelSpecError(f"layer_path {self.layer_path!r} must contain '{{i}}' for the layer index")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` (``module.sub:obj.attr`` works too)."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ModelSpecError(f"expected 'module:function', got {spec!r}")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise ModelSpecError(f"cannot import module {mod_name!r} from {spec!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelSpecError(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSpecError(f"{spec!r} is not callable")
    return obj


# -- pi0 / pi0.5 with openpi's layout (reference, openpi PI0Pytorch, lerobot PI0/PI05 cores and policies) -----------

def pi_adapter(model: nn.Module, name: str = "pi") -> ModelAdapter:
    """Adapter for any model laid out like openpi's ``PI0Pytorch`` (module paths prefixed by ``model.`` for policies).

    Layer paths come from the ``openpi`` / ``lerobot`` layout; camera slots, tokens per image and the prompt offset
    from the model (see ``capture._pi``).
    """
    layout = LAYOUTS["openpi" if pi_core(model) is model else "lerobot"]  # pi_core refuses any other model
    return ModelAdapter(name=name, layer_paths=dict(layout.layers), cond_kwarg="adarms_cond", **pi_adapter_parts())


# -- transformers' own PI0 ---------------------------------------------------------------------------------------

def transformers_pi0_adapter(model: nn.Module) -> ModelAdapter:
    """Adapter for ``transformers.PI0ForConditionalGeneration`` (pi0: no AdaRMS, suffix = [state][H actions])."""
    from ._transformers_pi0 import pi0_input_ids, run_pi0

    def context(m: nn.Module, obs: Observation) -> BatchContext:
        ids, mask, offset = pi0_input_ids(m, obs)
        return BatchContext(
            sample=obs.sample, prompt_mask=obs.lang_masks.cpu().bool(), image_offset=offset,
            action_horizon=int(m.config.chunk_size), pad_mask=mask.cpu().bool(), prompt=obs.prompt,
            prompt_ids=obs.lang_tokens.cpu(), extra={"episode": obs.episode, "frame": obs.frame, "task": obs.task})

    roles = {"decision": RoleSpec("expert", decision, stepped=True), "instruction": RoleSpec("vlm", instruction),
             "full": RoleSpec("vlm", full), "suffix": RoleSpec("expert", full, stepped=True)}
    return ModelAdapter("transformers-pi0", dict(LAYOUTS["transformers-pi0"].layers), roles, run_pi0, context)


# -- any decoder (e.g. a Hugging Face causal LM) ------------------------------------------------------------------

def decoder_adapter(layer_path: str) -> ModelAdapter:
    """Adapter for a plain decoder called as ``model(input_ids=..., attention_mask=...)``; prompt = whole sequence."""

    def run(model: nn.Module, obs: Observation, num_steps: int) -> Any:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        ids = obs.lang_tokens % vocab if vocab else obs.lang_tokens
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=obs.lang_masks.long())

    def context(model: nn.Module, obs: Observation) -> BatchContext:
        mask = obs.lang_masks.cpu().bool()
        return BatchContext(sample=obs.sample, prompt_mask=mask, pad_mask=mask, prompt=obs.prompt,
                            prompt_ids=obs.lang_tokens.cpu(),
                            extra={"episode": obs.episode, "frame": obs.frame, "task": obs.task})

    roles = {"full": RoleSpec("main", full), "instruction": RoleSpec("main", instruction)}
    return ModelAdapter("decoder", {"main": layer_path}, roles, run, context)


def adapter_for(model: nn.Module, layer_path: str = "model.layers.{i}") -> ModelAdapter:
    """Pick the adapter from the model's structure (its ``family_layout``; a plain decoder if none fits)."""
    layout: ModelLayout | None = family_layout(model)
    if layout is None:
        return decoder_adapter(layer_path)
    if layout.name == "transformers-pi0":
        return transformers_pi0_adapter(model)
    core = pi_core(model)
    name = "reference" if isinstance(core, ReferencePi05) else type(core).__module__.split(".")[0]
    return pi_adapter(model, name)


# -- builders -----------------------------------------------------------------------------------------------------

def _load_state_dict(model: nn.Module, path: str) -> None:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelSpecError(f"checkpoint {path!r} does not match the model: missing {list(missing)[:5]}, "
                             f"unexpected {list(unexpected)[:5]}")


def _build_reference(spec: ModelSpec) -> nn.Module:
    model = ReferencePi05(ReferenceConfig(seed=spec.seed))
    if spec.checkpoint_path:
        _load_state_dict(model, spec.checkpoint_path)
    return model


def _build_transformers_pi0(spec: ModelSpec) -> nn.Module:
    from ._transformers_pi0 import TinyPI0Config, build_tiny_pi0

    if spec.checkpoint_path:
        from transformers import PI0ForConditionalGeneration

        return PI0ForConditionalGeneration.from_pretrained(spec.checkpoint_path).eval()
    return build_tiny_pi0(TinyPI0Config(seed=spec.seed))


def _build_lerobot(spec: ModelSpec) -> nn.Module:
    try:
        from lerobot.policies.pi05.modeling_pi05 import PI05Policy
    except ImportError as e:
        raise ModelSpecError(f"model 'lerobot' needs the lerobot package: {e}") from e
    if not spec.checkpoint_path:
        raise ModelSpecError("model 'lerobot' needs --checkpoint-path (a PI05Policy directory)")
    return PI05Policy.from_pretrained(spec.checkpoint_path).eval()


def _build_openpi(spec: ModelSpec) -> nn.Module:
    from ._openpi import build_openpi

    if not spec.checkpoint_path:
        raise ModelSpecError("model 'openpi' needs --checkpoint-path: the model.safetensors written by openpi's "
                             "convert_jax_model_to_pytorch.py (its config.json beside it is read too); or pass "
                             "--model-factory module:function returning a PI0Pytorch (recognised automatically)")
    return build_openpi(spec.checkpoint_path)


def _build_factory(spec: ModelSpec) -> nn.Module:
    assert spec.factory is not None
    return load_callable(spec.factory)(spec.checkpoint_path, spec.seed)


MODELS: dict[str, Callable[[ModelSpec], Any]] = {
    "reference": _build_reference, "transformers-pi0": _build_transformers_pi0, "lerobot": _build_lerobot,
    "openpi": _build_openpi, "factory": _build_factory}
"""Model name -> builder."""


def load_model(spec: ModelSpec) -> tuple[nn.Module, ModelAdapter]:
    """Build (or load) the model named by ``spec`` and pick its adapter."""
    built = MODELS[spec.name](spec)
    model, adapter = built if isinstance(built, tuple) else (built, None)
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"model {spec.name!r} built a {type(model).__name__}, not a torch.nn.Module")
    model = cast_like_upstream(model, spec.device, _DTYPES[spec.dtype]).eval()
    return model, adapter or adapter_for(model, spec.layer_path)


def recorded_model(attrs: dict[str, Any], *, name: str | None = None, checkpoint_path: str | None = None,
                   factory: str | None = None) -> nn.Module:
    """The model a store was captured from, rebuilt from what ``capture`` recorded in its attrs (``attrs["model"]``:
    name, checkpoint_path, factory, seed, dtype); ``name`` / ``checkpoint_path`` / ``factory`` override the record
    (a ``factory`` implies ``name="factory"``). A store without a record gets the reference policy. Used by the
    ``actstore lens`` and ``actstore dashboard --lens`` commands."""
    rec = attrs.get("model") if isinstance(attrs.get("model"), dict) else {}
    name = "factory" if factory else (name or rec.get("name") or "reference")
    if name == "factory" and not factory:
        factory = rec.get("factory")
    spec = ModelSpec(name=name, checkpoint_path=checkpoint_path or rec.get("checkpoint_path"), factory=factory,
                     seed=int(rec.get("seed", 0)), dtype=rec.get("dtype", "float32"))
    return load_model(spec)[0]

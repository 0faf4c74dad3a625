"""Model layouts: where each family of models keeps its decoder layers, final norms and heads (module paths).

The one home of these paths: the capture adapters hook the ``layers`` templates, the lenses (``capture._lens``)
call the norms and heads. ``LAYOUTS`` holds the known families; :func:`layout_for` picks one from a model's
structure (pi0 vs pi0.5: whether the expert's final norm is adaptive), :func:`family_layout` without that check.

- ``openpi``: openpi's ``PI0Pytorch``, the built-in reference policy and lerobot's cores (``PI05Pytorch``);
- ``lerobot``: a lerobot policy (``PI05Policy``), which wraps the core in ``.model``: every path gains ``model.``;
- ``transformers-pi0``: transformers' ``PI0ForConditionalGeneration`` (pi0: a plain RMSNorm, no AdaRMS).

pi0 models laid out like openpi get ``openpi-pi0`` / ``lerobot-pi0`` (same paths, ``adaptive=False``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from actstore import UnknownKeyError

__all__ = ["LAYOUTS", "PI_EXPERT", "PI_VLM", "ModelLayout", "family_layout", "layout_for", "pi_layout", "pi_prefix"]

PI_VLM = "paligemma_with_expert.paligemma.model.language_model.layers.{i}"
"""PaliGemma's decoder layers in openpi's layout (``{i}``: the layer index)."""
PI_EXPERT = "paligemma_with_expert.gemma_expert.model.layers.{i}"
"""The action expert's decoder layers in openpi's layout."""


@dataclass(frozen=True)
class ModelLayout:
    """Module paths of the decoder layers, final norms and heads in one family of models."""

    name: str
    """Layout name (a key of ``LAYOUTS``, or ``<name>-pi0`` for the non-adaptive variant)."""
    expert_norm: str
    """Final norm of the action expert; called ``norm(x, cond)`` when ``adaptive`` else ``norm(x)``."""
    vlm_norm: str
    """Final norm of PaliGemma's language model."""
    heads: dict[str, str | None] = field(default_factory=dict)
    """Head name (a key of ``capture.HEADS``) -> module path (a Linear, or an Embedding used as a tied
    unembedding); ``None``: the model has no such head."""
    adaptive: bool = True
    """The expert's final norm takes the AdaRMS conditioning (pi0.5); False for pi0."""
    cond: str | None = "adarms"
    """Name of the store's conditioning that feeds the adaptive norm."""
    layers: dict[str, str] = field(default_factory=dict)
    """Decoder stack (``vlm``, ``expert``) -> module path template of its layers, ``{i}`` for the layer index."""


def pi_layout(name: str, prefix: str, adaptive: bool) -> ModelLayout:
    """openpi's layout with every path prefixed by ``prefix`` (``model.`` for a lerobot policy)."""
    pwe = prefix + "paligemma_with_expert."
    return ModelLayout(
        name, pwe + "gemma_expert.model.norm", pwe + "paligemma.model.language_model.norm",
        {"action": prefix + "action_out_proj", "vlm_lm_head": pwe + "paligemma.lm_head",
         "expert_lm_head": pwe + "gemma_expert.lm_head"},
        adaptive=adaptive, cond="adarms" if adaptive else None,
        layers={"vlm": prefix + PI_VLM, "expert": prefix + PI_EXPERT})


LAYOUTS: dict[str, ModelLayout] = {
    "openpi": pi_layout("openpi", "", True),
    "lerobot": pi_layout("lerobot", "model.", True),
    "transformers-pi0": ModelLayout(
        "transformers-pi0", "model.dit.norm", "model.vlm.language_model.norm",
        {"action": "action_out_proj", "vlm_lm_head": "model.vlm.language_model.embed_tokens",
         "expert_lm_head": None},
        adaptive=False, cond=None,
        layers={"vlm": "model.vlm.language_model.layers.{i}", "expert": "model.dit.layers.{i}"}),
}
"""Known layouts. ``openpi`` also fits the built-in reference policy and lerobot's core ``PI05Pytorch``;
``lerobot`` fits a ``PI05Policy`` (which wraps the core in ``.model``)."""


def pi_prefix(model: nn.Module) -> str | None:
    """``""`` for a model holding ``paligemma_with_expert``, ``"model."`` for a policy wrapping one in ``.model``,
    ``None`` for any other model."""
    if hasattr(model, "paligemma_with_expert"):
        return ""
    if hasattr(getattr(model, "model", None), "paligemma_with_expert"):
        return "model."
    return None


def family_layout(model: nn.Module) -> ModelLayout | None:
    """The layout of the model's family by structure alone (pi0 and pi0.5 alike), ``None`` if none fits."""
    if type(model).__name__ == "PI0ForConditionalGeneration":
        return LAYOUTS["transformers-pi0"]
    prefix = pi_prefix(model)
    if prefix is None:
        return None
    return LAYOUTS["openpi" if prefix == "" else "lerobot"]


def layout_for(model: nn.Module) -> ModelLayout:
    """The model's layout: its family's, made non-adaptive for a pi0 (whose expert norm has no ``dense``)."""
    base = family_layout(model)
    if base is None:
        raise UnknownKeyError(
            f"no known layout for {type(model).__name__}; layouts are {sorted(LAYOUTS)} - pass "
            "layout=ModelLayout(...) with the module paths of the final norms and heads")
    if not base.adaptive:
        return base
    try:
        norm = model.get_submodule(base.expert_norm)
    except AttributeError:
        raise UnknownKeyError(f"model {type(model).__name__} has no module {base.expert_norm!r} (the expert's "
                              f"final norm of layout {base.name!r})") from None
    if getattr(norm, "dense", None) is not None:
        return base
    return pi_layout(base.name + "-pi0", "" if base.name == "openpi" else "model.", False)

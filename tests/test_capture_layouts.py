"""Model layouts: one table serves the capture adapters and the lenses, and every path in it names a real module.

The reference policy (openpi's layout), a lerobot-style wrapper (``model.`` prefix), a pi0 variant (the expert's
final norm not adaptive) and transformers' PI0 are resolved with ``get_submodule``: each layout's norms, heads and
layer templates must name modules of the right kind in the model itself, and the adapters must hook exactly the
layout's layer templates.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import actstore
from capture import (
    LAYOUTS,
    AdaRMSNorm,
    ModelLayout,
    ReferenceConfig,
    ReferencePi05,
    adapter_for,
    layout_for,
)
from capture._layouts import family_layout


@pytest.fixture(scope="module")
def model() -> ReferencePi05:
    return ReferencePi05(ReferenceConfig(seed=0))


class Policy(nn.Module):
    """lerobot's policies wrap the core in ``.model``."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.model = core


def _check_paths(net: nn.Module, layout: ModelLayout, depth: int) -> None:
    assert isinstance(net.get_submodule(layout.expert_norm), nn.Module)
    assert isinstance(net.get_submodule(layout.vlm_norm), nn.Module)
    for head, path in layout.heads.items():
        if path is not None:
            assert isinstance(net.get_submodule(path), (nn.Linear, nn.Embedding)), head
    for stack, template in layout.layers.items():
        assert "{i}" in template, stack
        net.get_submodule(template.format(i=0))
        net.get_submodule(template.format(i=depth - 1))
        with pytest.raises(AttributeError):
            net.get_submodule(template.format(i=depth))


def test_reference_and_wrapped_policy(model: ReferencePi05) -> None:
    assert layout_for(model) is LAYOUTS["openpi"]
    _check_paths(model, LAYOUTS["openpi"], model.config.depth)
    wrapped = Policy(model)
    assert layout_for(wrapped) is LAYOUTS["lerobot"]
    _check_paths(wrapped, LAYOUTS["lerobot"], model.config.depth)
    assert wrapped.get_submodule(LAYOUTS["lerobot"].expert_norm) is model.paligemma_with_expert.gemma_expert.model.norm
    # the adapters hook exactly the layout's layer templates
    assert adapter_for(model).layer_paths == LAYOUTS["openpi"].layers
    assert adapter_for(wrapped).layer_paths == LAYOUTS["lerobot"].layers


def test_pi0_expert_norm_is_not_adaptive(model: ReferencePi05) -> None:
    pi0 = ReferencePi05(ReferenceConfig(seed=0))
    pi0.paligemma_with_expert.gemma_expert.model.norm = AdaRMSNorm(pi0.config.expert_width)  # plain RMSNorm
    layout = layout_for(pi0)
    assert layout.name == "openpi-pi0" and not layout.adaptive and layout.cond is None
    assert (layout.heads, layout.layers, layout.expert_norm) == (
        LAYOUTS["openpi"].heads, LAYOUTS["openpi"].layers, LAYOUTS["openpi"].expert_norm)
    assert layout_for(Policy(pi0)).name == "lerobot-pi0"
    assert family_layout(pi0) is LAYOUTS["openpi"]  # the family (layers) does not depend on the norm


def test_unknown_models() -> None:
    with pytest.raises(actstore.UnknownKeyError, match="layouts are"):
        layout_for(nn.Linear(2, 2))
    assert family_layout(nn.Linear(2, 2)) is None
    assert adapter_for(nn.Linear(2, 2)).name == "decoder"  # no layout: the plain-decoder adapter
    broken = nn.Module()
    broken.paligemma_with_expert = nn.Module()  # the pi structure without its final norm
    with pytest.raises(actstore.UnknownKeyError, match="gemma_expert.model.norm"):
        layout_for(broken)


@pytest.mark.slow
def test_transformers_pi0_paths() -> None:
    pytest.importorskip("transformers")
    from capture import TinyPI0Config, build_tiny_pi0

    net = build_tiny_pi0(TinyPI0Config(seed=0))
    layout = layout_for(net)
    assert layout is LAYOUTS["transformers-pi0"] and not layout.adaptive
    depth = len(net.get_submodule("model.dit.layers"))
    _check_paths(net, layout, depth)
    assert adapter_for(net).layer_paths == layout.layers
    assert torch.is_tensor(net.get_submodule(layout.heads["vlm_lm_head"]).weight)

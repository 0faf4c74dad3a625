"""Adapter registry: structure-based detection, factories (any HF decoder), openpi / lerobot when importable, and
the model a store records (``recorded_model``)."""

from __future__ import annotations

import pytest
import torch
from _capture_util import MemoryWriter, layer_outputs

from capture import (
    MODELS,
    ModelSpec,
    ModelSpecError,
    Recorder,
    ReferencePi05,
    SyntheticConfig,
    adapter_for,
    load_model,
    make_batch,
    recorded_model,
)
from capture._adapters import load_callable

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bit-exact model comparisons


def tiny_gemma(checkpoint_path, seed):
    """Factory used below: a 4-layer random Hugging Face Gemma causal LM."""
    from transformers import GemmaConfig, GemmaForCausalLM

    torch.manual_seed(seed)
    cfg = GemmaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=1, head_dim=8, vocab_size=600)
    return GemmaForCausalLM(cfg)


def test_registry_and_spec_validation():
    assert {"reference", "transformers-pi0", "openpi", "lerobot", "factory"} <= set(MODELS)
    with pytest.raises(ModelSpecError, match="models are"):
        ModelSpec(name="pi9")
    with pytest.raises(ModelSpecError, match="factory"):
        ModelSpec(name="factory")
    with pytest.raises(ModelSpecError, match="module:function"):
        load_callable("nocolon")
    with pytest.raises(ModelSpecError, match="cannot import"):
        load_callable("no_such_module_xyz:f")


def test_reference_adapter_paths():
    model, adapter = load_model(ModelSpec())
    assert isinstance(model, ReferencePi05) and adapter.name == "reference"
    assert adapter.layer_paths["expert"] == "paligemma_with_expert.gemma_expert.model.layers.{i}"
    assert adapter.cond_kwarg == "adarms_cond"


def test_policy_wrapper_gets_model_prefix():
    wrapper = torch.nn.Module()
    wrapper.model = ReferencePi05()
    adapter = adapter_for(wrapper)
    assert adapter.layer_paths["vlm"].startswith("model.paligemma_with_expert.")


def test_factory_hf_decoder_full_rows_bit_exact():
    model, adapter = load_model(ModelSpec(name="factory", factory="test_capture_adapters:tiny_gemma"))
    assert adapter.name == "decoder"
    obs = make_batch(SyntheticConfig(batch_size=2, image_size=14), 0)
    obs.lang_masks[0, 5:] = False
    sites = adapter.sites([1, 3], ["full"])
    w = MemoryWriter()
    with Recorder(model, w, sites) as rec, rec.batch(adapter.context(model, obs)):
        adapter.run(model, obs, 1)
    direct = layer_outputs({s.path for s in sites}, model, lambda: adapter.run(model, obs, 1))
    _, acts = w.rows("full", 3)
    assert torch.equal(acts, direct["model.layers.3"][0][obs.lang_masks])


def test_lerobot_pi05_when_installed():
    mod = pytest.importorskip("lerobot.policies.pi05.modeling_pi05")
    assert hasattr(mod, "PI05Pytorch")
    with pytest.raises(ModelSpecError, match="checkpoint"):
        load_model(ModelSpec(name="lerobot"))


def test_openpi_when_installed():
    pi0 = pytest.importorskip("openpi.models_pytorch.pi0_pytorch")
    assert hasattr(pi0, "PI0Pytorch")
    with pytest.raises(ModelSpecError, match="model-factory"):
        load_model(ModelSpec(name="openpi"))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_recorded_model_rebuilds_what_the_attrs_record(tmp_path):
    """The record capture_run writes (name, seed, dtype, checkpoint, factory) rebuilds the same weights; the
    command-line overrides win; a store without a record gets the reference policy."""
    import actstore
    from capture import ReferenceConfig, capture_run

    path = capture_run(output_dir=str(tmp_path / "s.zarr"), layers=(6,), roles=("decision",), batch_size=1,
                       max_batches=1, num_steps=1, seed=3, quiet=True, device="cpu")
    with actstore.ActStore.open(path) as store:
        attrs = store.attrs
    assert attrs["model"]["seed"] == 3  # the record capture_run wrote
    got = recorded_model(attrs)
    assert isinstance(got, ReferencePi05) and _same_weights(got, ReferencePi05(ReferenceConfig(seed=3)))
    assert not _same_weights(got, ReferencePi05(ReferenceConfig(seed=0)))
    ckpt = tmp_path / "w.pt"
    torch.save(ReferencePi05(ReferenceConfig(seed=7)).state_dict(), ckpt)
    assert _same_weights(recorded_model(attrs, checkpoint_path=str(ckpt)), ReferencePi05(ReferenceConfig(seed=7)))
    assert _same_weights(recorded_model({}), ReferencePi05(ReferenceConfig(seed=0)))
    bf16 = recorded_model({"model": {"name": "reference", "seed": 0, "dtype": "bfloat16"}})
    assert bf16.action_out_proj.weight.dtype == torch.bfloat16
    fac = {"model": {"name": "factory", "factory": "test_capture_adapters:tiny_gemma", "seed": 1}}
    assert type(recorded_model(fac)).__name__ == "GemmaForCausalLM"  # the recorded factory is called
    with pytest.raises(ModelSpecError, match="unknown model 'nope'"):
        recorded_model({}, name="nope")

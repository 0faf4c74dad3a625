"""transformers' own PI0 (tiny, random, offline): decision rows skip the state token; both stacks bit-exact."""

from __future__ import annotations

import pytest
import torch
from _capture_util import layer_outputs

from capture import Recorder, SyntheticConfig, TinyPI0Config, adapter_for, build_tiny_pi0, make_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bit-exact model comparisons

pytest.importorskip("transformers.models.pi0")
actstore = pytest.importorskip("actstore")

IMG, STEPS, H = 56, 2, 10


@pytest.fixture(scope="module")
def pi0():
    model = build_tiny_pi0(TinyPI0Config(image_size=IMG, action_horizon=H))
    return model, adapter_for(model)


def test_paths_and_adapter(pi0):
    model, adapter = pi0
    assert adapter.name == "transformers-pi0" and adapter.cond_kwarg is None
    names = dict(model.named_modules())
    for s in adapter.sites([6, 10, 14], ["decision", "instruction"]):
        assert s.path in names


def test_capture_is_bit_exact(pi0, tmp_path):
    model, adapter = pi0
    obs = make_batch(SyntheticConfig(batch_size=2, image_size=IMG, action_horizon=H), 0)
    obs.lang_masks[1, 6:] = False
    sites = adapter.sites([6, 14], ["decision", "instruction"])
    path = tmp_path / "pi0.zarr"
    with actstore.create(str(path), attrs={"model": {"name": "transformers-pi0"}}) as w, \
            Recorder(model, w, sites) as rec, rec.batch(adapter.context(model, obs), progress={"batches": 1}):
        adapter.run(model, obs, STEPS)
    direct = layer_outputs({s.path for s in sites}, model, lambda: adapter.run(model, obs, STEPS))
    store = actstore.ActStore.open(str(path))
    for layer in (6, 14):
        outs = direct[f"model.dit.layers.{layer}"]
        assert len(outs) == STEPS and outs[0].shape[1] == H + 1  # [state][H actions]
        for step in range(STEPS):
            assert torch.equal(store[layer, "decision", step][:], outs[step][:, 1:].reshape(2 * H, -1))
        pos = store.rows("decision")["position"]
        assert pos.min() == 1 and pos.max() == H
        off = 2 * (IMG // 14) ** 2
        prefix = direct[f"model.vlm.language_model.layers.{layer}"][0]
        assert torch.equal(store[layer, "instruction"][:], prefix[:, off:off + 32][obs.lang_masks])
    assert "adarms" not in store.conds

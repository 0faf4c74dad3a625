"""The issue's correctness checks through the real store: write with the Recorder, read with ActStore, compare
with the layer outputs recomputed directly (bit for bit) and with the model's own final AdaRMS norm."""

from __future__ import annotations

import pytest
import torch
from _capture_util import layer_outputs

import capture
from capture import Recorder, ReferenceConfig, ReferencePi05, SyntheticConfig, adapter_for, make_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bit-exact model comparisons

actstore = pytest.importorskip("actstore")
if not hasattr(actstore, "create"):
    pytest.skip("actstore.create not available yet", allow_module_level=True)

IMG, STEPS, LAYERS = 56, 3, [6, 10, 17]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two batches of the reference model captured into a zarr store, plus the directly recomputed outputs."""
    model = ReferencePi05(ReferenceConfig(image_size=IMG))
    adapter = adapter_for(model)
    batches = [make_batch(SyntheticConfig(batch_size=2, image_size=IMG), i) for i in range(2)]
    batches[1].lang_masks[0, 4:] = False
    sites = adapter.sites(LAYERS, ["decision", "instruction"])
    path = tmp_path_factory.mktemp("cap") / "run.zarr"
    with actstore.create(str(path), attrs={"model": {"name": "reference"}, "capture": {}}) as w, \
            Recorder(model, w, sites) as rec:
        for i, obs in enumerate(batches):
            with rec.batch(adapter.context(model, obs), progress={"batches": i + 1}):
                adapter.run(model, obs, STEPS)
    paths = {s.path for s in sites} | {"paligemma_with_expert.gemma_expert.model.norm"}
    direct = [layer_outputs(paths, model, lambda o=o: adapter.run(model, o, STEPS)) for o in batches]
    return actstore.ActStore.open(str(path)), model, adapter, batches, direct


def test_decision_rows_equal_layer_output_bit_for_bit(run):
    store, model, adapter, batches, direct = run
    assert sorted(store.layers) == LAYERS and set(store.roles) == {"decision", "instruction"}
    for layer in LAYERS:
        path = adapter.layer_paths["expert"].format(i=layer)
        for step in range(STEPS):
            want = torch.cat([d[path][step][:, -10:].reshape(-1, 32) for d in direct])
            got = store[layer, "decision", step][:]
            assert torch.equal(got, want), (layer, step)


def test_instruction_rows_equal_prompt_slice(run):
    store, model, adapter, batches, direct = run
    off = 2 * (IMG // 14) ** 2
    for layer in LAYERS:
        path = adapter.layer_paths["vlm"].format(i=layer)
        want = torch.cat([d[path][0][:, off:off + 32][o.lang_masks] for d, o in zip(direct, batches, strict=True)])
        assert torch.equal(store[layer, "instruction"][:], want)
    rows = store.rows("instruction")
    assert set(rows["step"].tolist()) == {actstore.NO_STEP} == {capture.NO_STEP}
    assert store.instruction_mask(2).tolist() == batches[1].lang_masks[0].tolist()


def test_final_adarms_norm_of_last_layer_matches_model(run):
    store, model, adapter, batches, direct = run
    cond = store.cond("adarms", role="decision")
    rows = store[17, "decision"][:]
    assert cond.shape == (rows.shape[0], 32)
    normed, _ = model.paligemma_with_expert.gemma_expert.model.norm(rows, cond)
    # the model's own normed output: the final norm of the last expert layer, decision tokens, per step
    want = torch.cat([torch.cat([d["paligemma_with_expert.gemma_expert.model.norm"][s][:, -10:].reshape(-1, 32)
                                 for s in range(STEPS)]) for d in direct])
    steps = store.rows("decision")["step"]
    assert steps.tolist() == [s for _ in batches for s in range(STEPS) for _ in range(2 * 10)]  # append order
    # the norm re-run on flat rows may take another SIMD path than the model's (B, T, D) call: an ulp, not more
    torch.testing.assert_close(normed, want, rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore:capture buffer pool full:RuntimeWarning")
def test_small_chunks_borrowed_from_the_capture_buffers(run, tmp_path):
    """With chunks smaller than an append (8 rows), most chunks are encoded straight from the Recorder's pooled
    buffers, which it reuses as soon as ``done`` returns them (a pool of about two steps' copies here, so buffers
    come back and are reused all the time; a ``done`` that came before the encode fails this often): the store holds
    the same rows, bit for bit, as the one written with whole chunks copied."""
    store, model, adapter, batches, _ = run
    sites = adapter.sites(LAYERS, ["decision", "instruction"])
    path = tmp_path / "small.zarr"
    with actstore.create(str(path), chunk_rows=8, block_rows=4) as w, \
            Recorder(model, w, sites, capture.RecorderConfig(buffer_bytes=20000)) as rec:
        for i, obs in enumerate(batches):
            with rec.batch(adapter.context(model, obs), progress={"batches": i + 1}):
                adapter.run(model, obs, STEPS)
    small = actstore.ActStore.open(str(path))
    for layer in LAYERS:
        for role in ("decision", "instruction"):
            assert torch.equal(small[layer, role][:], store[layer, role][:]), (layer, role)

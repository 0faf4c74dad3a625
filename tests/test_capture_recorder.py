"""Recorder hook machinery against an in-memory writer: bit-exact rows, steps, cond, hook removal."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _capture_util import MemoryWriter, layer_outputs
from torch import nn

from capture import (
    NO_STEP,
    BatchContext,
    CaptureError,
    ModelSpec,
    Recorder,
    ReferenceConfig,
    ReferencePi05,
    RoleSpec,
    Site,
    SiteError,
    SyntheticConfig,
    adapter_for,
    full,
    load_model,
    make_batch,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bit-exact model comparisons

STEPS = 3


IMG = 56  # 16 tokens per camera: keeps the tests fast


@pytest.fixture(scope="module")
def ref():
    model = ReferencePi05(ReferenceConfig(image_size=IMG))
    return model, adapter_for(model)


def _obs(batch_size: int, index: int = 0):
    return make_batch(SyntheticConfig(batch_size=batch_size, image_size=IMG), index)


def _record(model, adapter, sites, obs, writer=None, steps=STEPS):
    writer = writer or MemoryWriter()
    with Recorder(model, writer, sites) as rec, rec.batch(adapter.context(model, obs), progress={"batches": 1}):
        adapter.run(model, obs, steps)
    return writer


def test_decision_and_instruction_rows_are_bit_exact(ref):
    model, adapter = ref
    obs = _obs(3, 0)
    obs.lang_masks[1, 5:] = False  # a short prompt: padding must be dropped
    sites = adapter.sites([6, 14], ["decision", "instruction"])
    w = _record(model, adapter, sites, obs)
    direct = layer_outputs({s.path for s in sites}, model, lambda: adapter.run(model, obs, STEPS))
    for layer in (6, 14):
        exp_steps = direct[adapter.layer_paths["expert"].format(i=layer)]
        assert len(exp_steps) == STEPS
        for step in range(STEPS):
            rows, acts = w.rows("decision", layer, step)
            assert torch.equal(acts, exp_steps[step][:, -10:].reshape(-1, 32))
            assert rows["position"].tolist() == list(range(10)) * 3
            assert rows["sample"].tolist() == np.repeat(obs.sample.numpy(), 10).tolist()
        rows, acts = w.rows("instruction", layer)
        prefix = direct[adapter.layer_paths["vlm"].format(i=layer)][0]
        off = 2 * (IMG // 14) ** 2
        assert torch.equal(acts, prefix[:, off:off + 32][obs.lang_masks])
        assert set(rows["step"].tolist()) == {NO_STEP}
        assert len(acts) == int(obs.lang_masks.sum())


def test_one_append_per_role_and_step_and_one_cond_per_step(ref):
    model, adapter = ref
    obs = _obs(2, 1)
    w = _record(model, adapter, adapter.sites([6, 10, 14], ["decision", "instruction"]), obs)
    dec = [a for a in w.appends if a[0] == "decision"]
    assert len(dec) == STEPS and all(sorted(a[2]) == [6, 10, 14] for a in dec)
    assert [int(a[1]["step"][0]) for a in dec] == list(range(STEPS))
    assert len(w.conds) == STEPS and w.conds[0][0] == "adarms"
    assert w.conds[0][2].shape == (2, 32) and w.conds[0][1]["step"].tolist() == [0, 0]
    assert w.commits == [{"batches": 1}] and w.samples[0]["sample"].tolist() == [2, 3]
    assert w.samples[0]["instruction_mask"].shape == (2, 32) and "episode" in w.samples[0]


def test_hooks_removed_after_exception(ref):
    model, adapter = ref
    obs = _obs(1, 0)
    sites = adapter.sites([6], ["decision", "instruction"])
    with (pytest.raises(RuntimeError, match="boom"), Recorder(model, MemoryWriter(), sites) as rec,
          rec.batch(adapter.context(model, obs))):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())


def test_bad_layer_names_the_valid_range(ref):
    model, adapter = ref
    with pytest.raises(SiteError, match=r"layers\.40.*0\.\.17"):
        Recorder(model, MemoryWriter(), adapter.sites([40], ["decision"]))


class _TensorLM(nn.Module):
    """A toy decoder whose layers return tensors (transformers 5 style) instead of 1-tuples."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_tensor_outputs_and_calls_outside_batch_are_not_recorded_with_one_warning():
    torch.manual_seed(0)
    model = _TensorLM()
    x = torch.randn(2, 5, 4)
    w = MemoryWriter()
    sites = [Site(1, "full", "layers.1", full)]
    ctx = BatchContext(sample=torch.tensor([0, 1]))
    with Recorder(model, w, sites) as rec:
        with pytest.warns(UserWarning, match=r"'layers.1' ran outside 'with rec.batch\(ctx\):'") as caught:
            model(x)  # warm-up outside a batch: not recorded, said once
            model(x)
        assert len([c for c in caught if "outside" in str(c.message)]) == 1
        assert caught[0].filename == __file__  # points at the model code that called the layer, not at torch
        assert not w.appends
        with rec.batch(ctx):
            out = model(x)
    assert len(w.appends) == 1 and torch.equal(w.appends[0][2][1], out.reshape(10, 4))
    with Recorder(model, MemoryWriter(), sites) as rec, pytest.raises(CaptureError, match="twice"), rec.batch(ctx):
        model(x)
        model(x)
    assert not model.layers[1]._forward_hooks


def test_user_selector_callable(ref):
    model, adapter = ref
    obs = _obs(2, 0)
    from capture import Selection

    def first_two(num_tokens, ctx):
        return Selection(0, 2)

    spec = RoleSpec("expert", first_two, stepped=True)
    site = Site(6, "first2", adapter.layer_paths["expert"].format(i=6), spec.selector, spec.stepped)
    w = _record(model, adapter, [site], obs, steps=2)
    rows, acts = w.rows("first2", 6, 1)
    assert acts.shape == (4, 32) and rows["position"].tolist() == [0, 1, 0, 1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_is_bit_exact():
    model, adapter = load_model(ModelSpec(device="cuda"))
    obs = make_batch(SyntheticConfig(batch_size=2), 0).to("cuda")
    sites = adapter.sites([6, 14], ["decision", "instruction"])
    w = _record(model, adapter, sites, obs)
    direct = layer_outputs({s.path for s in sites}, model, lambda: adapter.run(model, obs, STEPS))
    _, acts = w.rows("decision", 14, 2)
    assert torch.equal(acts, direct[adapter.layer_paths["expert"].format(i=14)][2][:, -10:].reshape(-1, 32).cpu())
    _, acts = w.rows("instruction", 6)
    prefix = direct[adapter.layer_paths["vlm"].format(i=6)][0].cpu()
    assert torch.equal(acts, prefix[:, 512:544][obs.lang_masks.cpu()])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_nonfinite_checked_on_the_device(tmp_path):
    """On CUDA the Recorder checks each copied range for NaN/Inf on the GPU: an append whose layers are all finite
    goes to the writer with ``finite=True`` (not counted again on its threads); one with a NaN/Inf anywhere in the
    range, padding included, is counted by the writer, so the store's count is that of the kept rows."""
    from transformers import GPT2Config, GPT2LMHeadModel

    import actstore
    from capture import BatchContext, Recorder, Site, full

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, bos_token_id=0,
                                       eos_token_id=0)).eval().cuda()
    sites = [Site(layer=i, role="full", path=f"transformer.h.{i}", selector=full, stepped=False) for i in (0, 1)]
    ids = torch.randint(0, 100, (2, 6), device="cuda")
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    poison: list[tuple[int, int]] = []  # (batch row, token) set to NaN / Inf in layer 1's output

    def inject(module, args, out):
        hidden = out[0] if isinstance(out, tuple) else out
        for i, (b, t) in enumerate(poison):
            hidden[b, t, i % 32] = float("nan") if i % 2 == 0 else float("-inf")

    class Spy:
        def __init__(self, writer):
            self.writer, self.config, self.finite = writer, writer.config, []

        def append(self, role, rows, acts, *, done=None, finite=False):
            self.finite.append(finite)
            self.writer.append(role, rows, acts, done=done, finite=finite)

        def __getattr__(self, name):
            return getattr(self.writer, name)

    model.transformer.h[1].register_forward_hook(inject)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with torch.no_grad(), actstore.create(tmp_path / "s.zarr", autocommit=False) as w:
            spy = Spy(w)
            with Recorder(model, spy, sites) as rec:
                for n, bad in enumerate([[], [(0, 2), (0, 3)], [(1, 5)]]):  # clean, kept, padding only
                    poison[:] = bad
                    ctx = BatchContext(sample=torch.arange(2 * n, 2 * n + 2), pad_mask=mask)
                    with rec.batch(ctx, progress={"batches": n + 1}):
                        model(input_ids=ids, attention_mask=mask.long().cuda())
    assert spy.finite == [True, False, False]
    with actstore.ActStore.open(tmp_path / "s.zarr") as store:
        stored = store[1, "full"][:].float().numpy()
        assert int((~np.isfinite(stored)).sum()) == 2
        assert dict(store.record.commit.nonfinite or {}) == {"acts/full/1": 2}


def test_any_hf_decoder_with_grad_enabled(tmp_path):
    """Sites given as plain module paths on a Hugging Face decoder; the forward runs with autograd on."""
    from transformers import GPT2Config, GPT2LMHeadModel

    import actstore
    from capture import BatchContext, Recorder, Site, full

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, bos_token_id=0,
                                       eos_token_id=0)).eval()  # eval: no dropout; autograd stays on
    sites = [Site(layer=i, role="full", path=f"transformer.h.{i}", selector=full, stepped=False) for i in (0, 1)]
    ids = torch.randint(0, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    ctx = BatchContext(sample=torch.arange(2), pad_mask=mask)
    with actstore.create(tmp_path / "gpt2.zarr", autocommit=False) as w, Recorder(model, w, sites) as rec, \
            rec.batch(ctx, progress={"batches": 1}):
        model(input_ids=ids, attention_mask=mask.long())
    want = layer_outputs(["transformer.h.1"], model, lambda: model(input_ids=ids, attention_mask=mask.long()))
    store = actstore.ActStore.open(tmp_path / "gpt2.zarr")
    assert torch.equal(store[1, "full"][:], want["transformer.h.1"][0][mask])
    assert store.rows("full")["position"].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]


def test_buffer_pool_smaller_than_one_step_is_refused_at_once(ref):
    """A pool that cannot hold the copies of one step of a role's layers (handed to the writer together) would wait
    for buffers nothing can return: refused with the size it needs, not after the pool's 10-minute timeout."""
    model, adapter = ref
    from capture import CaptureConfigError, RecorderConfig

    sites = adapter.sites([6, 10, 14], ["decision"])
    with pytest.raises(CaptureConfigError, match=r"buffer_bytes=3000 .* at least \d+"), \
            Recorder(model, MemoryWriter(), sites, RecorderConfig(buffer_bytes=3000)) as rec, \
            rec.batch(adapter.context(model, _obs(2, 0))):
        adapter.run(model, _obs(2, 0), STEPS)

"""Lenses equal a direct computation through the model.

Reference pi0.5, layer 17 (the last): the velocity lens of the stored decision rows equals what the model's own
``action_out_proj`` produced for those tokens during a rerun of the same batch, and the logit lens equals the model's
PaliGemma final-norm output times ``lm_head``. The store is float32, the model is float32 on CPU, and the lens calls
the very same modules on the same values; only the batch shape differs ((N, W) rows with a per-row cond instead of
(B, H, W) with a per-sample cond), and another shape may take another SIMD / GEMM path in ATen on some CPUs (it did
on CI), so values are compared within 1e-6 and the top-k token ids exactly. Intermediate layers are checked against the AdaRMS formula
(``x * rsqrt(mean(x^2) + eps) * (1 + scale) + shift``) written out by hand, within float32 tolerance (a different order of operations).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import actstore
import capture
from capture import (
    LAYOUTS,
    UntrainedHeadError,
    apply_lens,
    check_head,
    layout_for,
    logit_lens,
    velocity_lens,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bit-exact model comparisons


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[torch.Tensor]], np.ndarray]:
    """A reference capture of layers 6 and 17, plus the model's own outputs on a rerun of the same batch."""
    path = tmp_path_factory.mktemp("lens") / "ref.zarr"
    capture.capture_run(output_dir=str(path), layers=(6, 17), batch_size=2, max_batches=1, num_steps=3, quiet=True,
                        device="cpu")
    model = capture.ReferencePi05(capture.ReferenceConfig(seed=0))
    seen: dict[str, list[torch.Tensor]] = {"action": [], "vlm_norm": []}
    pwe = model.paligemma_with_expert
    hooks = [
        model.action_out_proj.register_forward_hook(lambda m, i, o: seen["action"].append(o.detach().clone())),
        pwe.paligemma.model.language_model.norm.register_forward_hook(
            lambda m, i, o: seen["vlm_norm"].append(o[0].detach().clone())),
    ]
    obs = next(iter(capture.synthetic_batches(capture.SyntheticConfig(batch_size=2, seed=0, action_horizon=10), 0, 1)))
    try:
        model.sample_actions(obs.images, obs.img_masks, obs.lang_tokens, obs.lang_masks, noise=obs.noise, num_steps=3)
    finally:
        for h in hooks:
            h.remove()
    return path, seen, np.asarray(obs.sample)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return capture.ReferencePi05(capture.ReferenceConfig(seed=0))


def test_velocity_lens_equals_the_models_action_head(captured, model) -> None:
    path, seen, batch_samples = captured
    with actstore.ActStore.open(path) as store:
        got = velocity_lens(store, model, layer=17)
        rows = store.rows("decision")
        b = np.searchsorted(batch_samples, rows["sample"])
        want = torch.stack([seen["action"][s][i, p] for s, i, p in zip(rows["step"], b, rows["position"], strict=True)])
        assert got.shape == (len(rows["sample"]), model.config.action_dim)
        # the head re-run on flat rows may take another SIMD/GEMM path than the model's (B, H, D) call (an ulp)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        step2 = velocity_lens(store, model, layer=17, step=2)
        torch.testing.assert_close(step2, got[torch.from_numpy(rows["step"] == 2)], rtol=1e-6, atol=1e-6)


def test_logit_lens_equals_final_norm_times_lm_head(captured, model) -> None:
    path, seen, batch_samples = captured
    with actstore.ActStore.open(path) as store:
        top = logit_lens(store, model, layer=17, k=4, tokenizer=lambda i: f"<{i}>")
        rows = store.rows("instruction")
        b = np.searchsorted(batch_samples, rows["sample"])
        normed = torch.stack([seen["vlm_norm"][0][i, p] for i, p in zip(b, rows["position"], strict=True)])
        logits = normed @ model.paligemma_with_expert.paligemma.lm_head.weight.T
        vals, ids = logits.topk(4, dim=-1)
        assert torch.equal(top.ids, ids)
        torch.testing.assert_close(top.logits, vals, rtol=1e-6, atol=1e-6)
        assert top.tokens is not None and top.tokens[0][0] == f"<{int(ids[0, 0])}>"
        one = logit_lens(store, model, layer=17, sample=int(batch_samples[1]), k=4)
        assert np.all(one.rows["sample"] == batch_samples[1])
        assert torch.equal(one.ids, top.ids[torch.from_numpy(rows["sample"] == batch_samples[1])])


def test_intermediate_layer_matches_the_adarms_formula(captured, model) -> None:
    path, _, _ = captured
    with actstore.ActStore.open(path) as store:
        got = velocity_lens(store, model, layer=6, step=[0, 1])
        view = store.select(6, "decision", step=[0, 1])
        x = view[:]
        cond = store.cond("adarms", role="decision", rows=view.row_index)
    norm = model.paligemma_with_expert.gemma_expert.model.norm
    scale, shift, _ = F.linear(cond, norm.dense.weight, norm.dense.bias).chunk(3, dim=-1)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + scale) + shift
    want = normed @ model.action_out_proj.weight.T + model.action_out_proj.bias
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_untrained_head_is_refused_unless_allowed(captured, model) -> None:
    path, _, _ = captured
    with actstore.ActStore.open(path) as store:
        with pytest.raises(UntrainedHeadError, match="never sends it a gradient") as err:
            apply_lens(store, model, 17, head="expert_lm_head")
        assert isinstance(err.value, actstore.ActStoreError) and isinstance(err.value, ValueError)
        with pytest.raises(UntrainedHeadError):
            logit_lens(store, model, 17, role="decision", head="expert_lm_head")
        out = apply_lens(store, model, 17, head="expert_lm_head", allow_untrained=True)
        assert out.shape == (store.num_rows("decision"), model.config.vocab_size)
        with pytest.raises(actstore.UnknownKeyError, match="heads are"):
            apply_lens(store, model, 17, head="nope")
    assert isinstance(err.value, actstore.ConfigError)  # the actstore CLI exits 2 on it
    assert check_head("expert_lm_head", allow_untrained=True).trained is False
    assert check_head("action").stack == "expert" and check_head("vlm_lm_head").stack == "vlm"


@pytest.mark.slow
def test_transformers_pi0_plain_norm(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    path = capture.capture_run(output_dir=str(tmp_path / "t.zarr"), model="transformers-pi0", layers=(6,),
                               roles=("decision", "instruction"), batch_size=2, max_batches=1, num_steps=2,
                               quiet=True, device="cpu")
    net = capture.build_tiny_pi0(capture.TinyPI0Config(seed=0))
    layout = layout_for(net)
    assert layout is LAYOUTS["transformers-pi0"] and not layout.adaptive
    with actstore.ActStore.open(path) as store:
        got = velocity_lens(store, net, layer=6)
        x = store[6, "decision"][:]
        want = net.action_out_proj(net.model.dit.norm(x))
        torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-6)
        top = logit_lens(store, net, layer=6, k=3)
        lm = net.model.vlm.language_model
        logits = lm.norm(store[6, "instruction"][:]) @ lm.embed_tokens.weight.T
        assert torch.equal(top.ids, logits.topk(3, dim=-1).indices)

"""The recorder's output checks (capture._outputs): never a silently wrong row.

Each case hooks a real tiny module; stored rows are compared against the raw output seen by an independent forward
hook written here (not the recorder's code path), row by row through the stored (sample, position) labels.
"""

from __future__ import annotations

import pytest
import torch
from _capture_util import MemoryWriter
from torch import nn

from capture import (
    BatchContext,
    CaptureError,
    Recorder,
    RecorderConfig,
    ReferenceConfig,
    ReferencePi05,
    Selection,
    Site,
    SyntheticConfig,
    adapter_for,
    full,
    make_batch,
)
from capture._errors import SiteOutputError
from capture._sites import suffix

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bit-exact model comparisons


def _clone(x):
    if torch.is_tensor(x):
        return x.detach().clone()
    if isinstance(x, dict):
        return type(x)({k: _clone(v) for k, v in x.items()})
    if isinstance(x, (tuple, list)):
        return type(x)(_clone(v) for v in x)
    return x


def raw_outputs(model: nn.Module, path: str, fn) -> list:
    """Every raw output of module ``path`` while ``fn()`` runs (structure kept, tensors cloned)."""
    got: list = []
    handle = dict(model.named_modules())[path].register_forward_hook(lambda m, i, o: got.append(_clone(o)))
    try:
        with torch.no_grad():
            fn()
    finally:
        handle.remove()
    return got


def record(model: nn.Module, sites: list[Site], ctx: BatchContext, fn, config=None) -> MemoryWriter:
    w = MemoryWriter()
    with Recorder(model, w, sites, config) as rec, rec.batch(ctx), torch.no_grad():
        fn()
    return w


def refused(model: nn.Module, sites: list[Site], ctx: BatchContext, fn, match: str, config=None) -> MemoryWriter:
    """Run ``fn`` under a Recorder expecting a SiteOutputError; checks nothing was stored and the batch rolled back."""
    w = MemoryWriter()
    with (Recorder(model, w, sites, config) as rec, pytest.raises(SiteOutputError, match=match) as err,
          rec.batch(ctx), torch.no_grad()):
        fn()
    assert isinstance(err.value, CaptureError) and isinstance(err.value, ValueError)
    assert not w.appends and not w.commits and w.rollbacks == 1
    assert all(not m._forward_hooks for m in model.modules())
    return w


def assert_rows_are(w: MemoryWriter, role: str, layer: int, out_BTD: torch.Tensor, sample0: int = 0) -> None:
    """Every stored row equals out_BTD[sample - sample0, position] (the labels are checked, not just the values)."""
    rows, acts = w.rows(role, layer)
    assert len(acts) == len(rows["sample"]) > 0
    for i, (s, p) in enumerate(zip(rows["sample"].tolist(), rows["position"].tolist(), strict=True)):
        assert torch.equal(acts[i], out_BTD[s - sample0, p]), (s, p)


# -- sequence-first modules: (T, B, D) with T == B -------------------------------------------------------------------

def _encoder(D: int = 8, batch_first: bool = False) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, 2, 16, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def test_seq_first_encoder_with_t_equal_b_is_refused_until_declared_then_stored_transposed():
    B = T = 4
    enc = _encoder()
    x_TBD = torch.randn(T, B, 8)
    pad_BT = torch.ones(B, T, dtype=torch.bool)
    pad_BT[1, 3:] = pad_BT[3, 2:] = False
    ctx = BatchContext(sample=torch.arange(10, 10 + B), pad_mask=pad_BT)
    with pytest.raises(SiteOutputError, match=r"'layers\.1' \(TransformerEncoderLayer\) has batch_first=False on "
                                              r"\['self_attn'\].*T == B.*Site\(\.\.\., batch_first=False\)"):
        Recorder(enc, MemoryWriter(), [Site(1, "full", "layers.1", full)])
    with pytest.raises(SiteOutputError, match=r"\['layers\.0\.self_attn', 'layers\.1\.self_attn'\]"):
        Recorder(enc, MemoryWriter(), [Site(0, "full", "", full)])  # the whole encoder: found in its layers

    def run():
        enc(x_TBD, src_key_padding_mask=~pad_BT)

    w = record(enc, [Site(1, "full", "layers.1", full, batch_first=False)], ctx, run)
    (out_TBD,) = raw_outputs(enc, "layers.1", run)
    assert out_TBD.shape == (T, B, 8)
    assert_rows_are(w, "full", 1, out_TBD.transpose(0, 1), sample0=10)
    rows, _ = w.rows("full", 1)
    assert len(rows["sample"]) == int(pad_BT.sum())  # padding dropped under the right (sample, position) labels
    assert not torch.equal(out_TBD, out_TBD.transpose(0, 1))  # read untransposed, the rows would have been wrong


def test_batch_first_declarations_are_checked_against_the_module():
    enc = _encoder(batch_first=True)
    Recorder(enc, MemoryWriter(), [Site(1, "full", "layers.1", full)])  # batch-first: nothing to declare
    with pytest.raises(SiteOutputError, match=r"says batch_first=False but the module is batch-first"):
        Recorder(enc, MemoryWriter(), [Site(1, "full", "layers.1", full, batch_first=False)])
    seq_first = _encoder()  # a site that wrongly declares batch_first=True is caught when T != B
    ctx = BatchContext(sample=torch.arange(3))
    refused(seq_first, [Site(1, "full", "layers.1", full, batch_first=True)], ctx,
            lambda: seq_first(torch.randn(5, 3, 8)),
            r"\(5, 3, 8\).*batch size 3 is dim 1: this looks sequence-first.*batch_first=False")


def test_lstm_output_tuple_read_seq_first():
    torch.manual_seed(0)
    net = nn.Sequential(nn.LSTM(4, 6)).eval()
    x_TBD = torch.randn(3, 3, 4)
    ctx = BatchContext(sample=torch.arange(3))
    with pytest.raises(SiteOutputError, match=r"'0' \(LSTM\) has batch_first=False on \['\(itself\)'\]"):
        Recorder(net, MemoryWriter(), [Site(0, "h", "0", full)])
    w = record(net, [Site(0, "h", "0", full, batch_first=False)], ctx, lambda: net(x_TBD))
    ((out_TBD, _),) = raw_outputs(net, "0", lambda: net(x_TBD))
    assert_rows_are(w, "h", 0, out_TBD.transpose(0, 1))


# -- tuples, dicts and other outputs ---------------------------------------------------------------------------------

class _Attn(nn.Module):
    """Self-attention block returning ``(attn_probs, hidden)``: the probabilities come first."""

    def __init__(self, average: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.average = average

    def forward(self, x):
        h, p = self.attn(x, x, x, need_weights=True, average_attn_weights=self.average)
        return p, h


class _Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.block = block

    def forward(self, x):
        return self.block(self.inp(x))


@pytest.mark.parametrize("average", [False, True], ids=["probs_BHTT", "probs_BTT"])
def test_attention_probs_first_is_refused_and_output_index_reads_the_hidden(average):
    torch.manual_seed(0)
    net = _Net(_Attn(average)).eval()
    x = torch.randn(2, 5, 8)
    ctx = BatchContext(sample=torch.arange(2))
    match = (r"element 0 of the output \(a tuple of 2.*\) is a 4-D tensor of shape \(2, 2, 5, 5\).*attention probabilities"
             r".*Site\(\.\.\., output_index=1\)") if not average else (
        r"element 0 and element\(s\) \[1\] are all \(B=2, T=5, \.\) tensors.*output_index=0 or output_index=1")
    refused(net, [Site(0, "h", "block", full)], ctx, lambda: net(x), match)
    w = record(net, [Site(0, "h", "block", full, output_index=1)], ctx, lambda: net(x))
    ((_, hidden),) = raw_outputs(net, "block", lambda: net(x))
    assert_rows_are(w, "h", 0, hidden)


class _Returns(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


BAD_OUTPUTS = {
    "dict": (lambda h: {"hidden": h, "gate": h[:, :1]},
             r"returned a dict with keys \['hidden', 'gate'\]; a dict has no first element.*output_key=K"),
    "none": (lambda h: None, r"the module returned None"),
    "2d_pooled": (lambda h: h.mean(1), r"2-D tensor of shape \(2, 8\).*no token axis"),
    "int": (lambda h: (h > 0).long(), r"int64\).*not integer or bool values"),
    "doubled_batch": (lambda h: torch.cat([h, h]), r"batch dim \(0\) is 4, not the batch size 2; rows are .*guidance"),
    "seq_first": (lambda h: h.transpose(0, 1).contiguous(), r"\(5, 2, 8\).*looks sequence-first.*batch_first=False"),
    "empty_tuple": (lambda h: (), r"returned an empty tuple"),
    "list_pooled_first": (lambda h: [h.mean(1), h], r"element 0 of the output \(a list of 2.*no token axis"),
    "tuple_of_str": (lambda h: ("hidden", h), r"element 0 of the output \(a tuple of 2: \[0\] a str.*output_index=1"),
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_outputs_that_are_not_b_t_d_are_refused(case):
    fn, match = BAD_OUTPUTS[case]
    net = _Net(_Returns(fn)).eval()
    x = torch.randn(2, 5, 8)
    refused(net, [Site(3, "acts", "block", full)], BatchContext(sample=torch.arange(2)), lambda: net(x),
            r"site \(layer 3, role 'acts'\) at module 'block' \(_Returns\).*" + match)


def test_output_key_and_index_pick_and_check_the_element():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    ctx = BatchContext(sample=torch.arange(2))
    net = _Net(_Returns(lambda h: {"hidden": h, "states": (h * 2, h * 3)})).eval()
    w = record(net, [Site(0, "h", "block", full, output_key="hidden"),
                     Site(1, "s", "block", full, output_key="states", output_index=-1)], ctx, lambda: net(x))
    (raw,) = raw_outputs(net, "block", lambda: net(x))
    assert_rows_are(w, "h", 0, raw["hidden"])
    assert_rows_are(w, "s", 1, raw["states"][1])
    for site, match in (
            (Site(0, "h", "block", full, output_key="nope"), r"no key 'nope'.*keys are \['hidden', 'states'\]"),
            (Site(0, "h", "block", full, output_key="states"), r"output\['states'\] is a tuple of 2"),
            (Site(0, "h", "block", full, output_key="states", output_index=2), r"output_index=2 is out of range"),
            (Site(0, "h", "block", full, output_index=0), r"output_index=0 but the output is a dict")):
        refused(net, [site], ctx, lambda: net(x), match)
    plain = _Net(_Returns(lambda h: h)).eval()
    refused(plain, [Site(0, "h", "block", full, output_key="hidden")], ctx, lambda: plain(x),
            r"output_key='hidden' but the module returned a 3-D tensor.*drop output_key")


def test_two_sites_read_two_elements_of_one_output():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8)
    ctx = BatchContext(sample=torch.arange(3))
    net = _Net(_Returns(lambda h: (h, h[..., :5] * 2))).eval()
    refused(net, [Site(0, "h", "block", full)], ctx, lambda: net(x), r"element\(s\) \[1\] are all")
    w = record(net, [Site(0, "h", "block", full, output_index=0), Site(0, "z", "block", full, output_index=1)],
               ctx, lambda: net(x))
    ((h, z),) = raw_outputs(net, "block", lambda: net(x))
    assert_rows_are(w, "h", 0, h)
    assert_rows_are(w, "z", 0, z)


# -- selections against the batch ----------------------------------------------------------------------------------

def test_full_with_a_pad_mask_of_another_width_is_refused():
    net = _Net(_Returns(lambda h: h)).eval()
    ctx = BatchContext(sample=torch.arange(2), pad_mask=torch.ones(2, 7, dtype=torch.bool))
    refused(net, [Site(0, "full", "block", full)], ctx, lambda: net(torch.randn(2, 5, 8)),
            r"'block' \(_Returns\): output \(B=2, T=5, D=8\): full selector: the layer output has 5 tokens but "
            r"BatchContext.pad_mask covers 7")


def test_selections_outside_the_tokens_or_disagreeing_within_a_role_are_refused():
    net = _Net(_Returns(lambda h: h)).eval()
    x = torch.randn(2, 5, 8)
    ctx = BatchContext(sample=torch.arange(2))
    refused(net, [Site(0, "r", "block", lambda T, c: Selection(2, T + 3))], ctx, lambda: net(x),
            r"tokens \[2, 8\), outside the layer's 5 tokens")
    refused(net, [Site(0, "r", "block", lambda T, c: Selection(0, T, torch.ones(2, T - 1, dtype=torch.bool)))],
            ctx, lambda: net(x), r"keep mask has shape \(2, 4\); expected \(2, 5\)")
    refused(net, [Site(0, "r", "block", lambda T, c: (0, T))], ctx, lambda: net(x), r"returned a tuple of 2")
    two = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)).eval()
    firsts = iter([Selection(0, 2), Selection(1, 3)])
    refused(two, [Site(0, "r", "0", lambda T, c: next(firsts)), Site(1, "r", "1", lambda T, c: next(firsts))],
            ctx, lambda: two(x), r"'1'.*selected tokens \[1, 3\).*layer 0 of role 'r' selected \[0, 2\)")


# -- Hugging Face model outputs --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, bos_token_id=0,
                                      eos_token_id=0)).eval()


def test_hf_model_output_element_0_or_output_key(gpt2):
    ids = torch.randint(0, 100, (2, 6))
    ctx = BatchContext(sample=torch.arange(2))
    run = lambda: gpt2(input_ids=ids)  # noqa: E731
    (raw,) = raw_outputs(gpt2, "transformer", run)
    assert type(raw).__name__.startswith("BaseModelOutput")
    w = record(gpt2, [Site(0, "last", "transformer", full),
                      Site(1, "last_k", "transformer", full, output_key="last_hidden_state")], ctx, run)
    assert_rows_are(w, "last", 0, raw.last_hidden_state)
    assert_rows_are(w, "last_k", 1, raw.last_hidden_state)


def test_hf_output_with_a_loss_first_names_the_keys(gpt2):
    ids = torch.randint(0, 100, (2, 6))
    ctx = BatchContext(sample=torch.arange(2))
    run = lambda: gpt2(input_ids=ids, labels=ids)  # noqa: E731
    refused(gpt2, [Site(0, "out", "", full)], ctx, run,
            r"element 0 of the output \(a CausalLMOutputWithCrossAttentions with keys \['loss', 'logits'.*0-D tensor.*"
            r"Site\(\.\.\., output_key='logits'\)")
    w = record(gpt2, [Site(0, "logits", "", full, output_key="logits")], ctx, run)
    (raw,) = raw_outputs(gpt2, "", run)
    assert_rows_are(w, "logits", 0, raw.logits)


# -- the reference pi0.5 ---------------------------------------------------------------------------------------------

IMG = 56


@pytest.fixture(scope="module")
def ref():
    model = ReferencePi05(ReferenceConfig(image_size=IMG))
    return model, adapter_for(model)


def test_reference_suffix_selector_stores_every_expert_token_and_full_is_refused_there(ref):
    model, adapter = ref
    obs = make_batch(SyntheticConfig(batch_size=2, image_size=IMG), 0)
    ctx = adapter.context(model, obs)
    path = adapter.layer_paths["expert"].format(i=6)
    run = lambda: adapter.run(model, obs, 2)  # noqa: E731
    w = record(model, [Site(6, "suffix", path, suffix, stepped=True)], ctx, run)
    raw = raw_outputs(model, path, run)
    assert len(raw) == 2
    for step in range(2):
        rows, acts = w.rows("suffix", 6, step)
        (out_BTD,) = raw[step]  # the layer returns a 1-tuple
        assert acts.shape == (2 * out_BTD.shape[1], 32)
        for i, (s, p) in enumerate(zip(rows["sample"].tolist(), rows["position"].tolist(), strict=True)):
            assert torch.equal(acts[i], out_BTD[s - int(obs.sample[0]), p])
    P = int(ctx.pad_mask.shape[1])  # before: every suffix token was kept with the prefix mask ignored, silently
    refused(model, [Site(6, "suffix", path, full, stepped=True)], ctx, run,
            rf"output \(B=2, T=10, D=32\): full selector: the layer output has 10 tokens but BatchContext.pad_mask "
            rf"covers {P}.*'suffix' selector")


def test_reference_bad_cond_keyword_is_refused(ref):
    model, adapter = ref
    obs = make_batch(SyntheticConfig(batch_size=2, image_size=IMG), 0)
    path = adapter.layer_paths["expert"].format(i=6)
    refused(model, [Site(6, "suffix", path, suffix, stepped=True)], adapter.context(model, obs),
            lambda: adapter.run(model, obs, 1),
            r"keyword 'attention_mask' of module .*layers\.6' is a 4-D tensor.*expected a \(B=2, C\)",
            config=RecorderConfig(cond_kwarg="attention_mask"))

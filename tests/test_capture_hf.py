"""``python -m capture --model hf``: any Hugging Face causal LM, captured through the CLI as the README shows.

Tiny random GPT-2 (layers at ``transformer.h.{i}``) and Llama (``model.layers.{i}``) models are saved with
``save_pretrained`` and captured exactly as a user would; the stored ``full`` rows are compared bit for bit with
the model's own ``output_hidden_states`` for the same input ids (read back from the store's sample table), padding
excluded, in (sample, position) order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import actstore
from capture._cli import main

transformers = pytest.importorskip("transformers")

LAYERS = (0, 1)


def _gpt2(path: Path) -> Path:
    cfg = transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=101, n_positions=128)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def _llama(path: Path) -> Path:
    cfg = transformers.LlamaConfig(num_hidden_layers=3, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                   num_key_value_heads=1, vocab_size=97, max_position_embeddings=128)
    torch.manual_seed(1)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize(("build", "layer_path"), [(_gpt2, "transformer.h.{i}"), (_gpt2, None), (_llama, None)],
                         ids=["gpt2-layer-path", "gpt2-auto", "llama-auto"])
def test_hf_causal_lm_full_rows_equal_hidden_states(tmp_path: Path, build, layer_path) -> None:
    ckpt = build(tmp_path / "model")
    out = tmp_path / "run.zarr"
    argv = ["--model", "hf", "--checkpoint-path", str(ckpt), "--roles", "full", "--layers", *map(str, LAYERS),
            "--batch-size", "3", "--max-batches", "2", "--output-dir", str(out), "--quiet"]
    if layer_path:
        argv += ["--layer-path", layer_path]
    with pytest.warns(UserWarning, match="no tokenizer"):
        assert main(argv) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt).eval()
    with actstore.open(out) as store:
        assert store.roles == ["full"] and store.layers == list(LAYERS)
        samples = store.samples()
        ids = torch.from_numpy(np.asarray(samples["prompt_ids"])) % model.config.vocab_size
        mask = torch.from_numpy(np.asarray(samples["instruction_mask"]))
        want: dict[int, list[torch.Tensor]] = {layer: [] for layer in LAYERS}
        for b in range(0, len(ids), 3):  # the same batches the capture ran (same padding, same shapes)
            with torch.no_grad():
                hs = model(input_ids=ids[b:b + 3], attention_mask=mask[b:b + 3].long(),
                           output_hidden_states=True).hidden_states
            for layer in LAYERS:
                want[layer].append(hs[layer + 1][mask[b:b + 3]])  # output of decoder layer i, real tokens only
        rows = store.rows("full")
        s, p = np.nonzero(mask.numpy())
        assert rows["sample"].tolist() == np.asarray(samples["sample"])[s].tolist()
        assert rows["position"].tolist() == p.tolist()
        for layer in LAYERS:
            assert torch.equal(store[layer, "full"][:], torch.cat(want[layer]))


def test_hf_bad_layer_path_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    ckpt = _gpt2(tmp_path / "model")
    out = tmp_path / "run.zarr"
    rc = main(["--model", "hf", "--checkpoint-path", str(ckpt), "--roles", "full", "--layers", "0",
               "--layer-path", "model.layers.{i}", "--max-batches", "1", "--output-dir", str(out), "--quiet"])
    assert rc != 0 and not out.exists()


def _word_tokenizer(path: Path) -> None:
    """A real (word-level) tokenizer saved beside the model, built offline with the tokenizers library."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from capture._synthetic import LIBERO_TASKS

    words = sorted({w for t in LIBERO_TASKS for w in t.split()})
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(path)


def test_hf_prompts_go_through_the_saved_tokenizer(tmp_path: Path) -> None:
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=200, n_positions=128)
    ckpt = tmp_path / "model"
    transformers.GPT2LMHeadModel(cfg).save_pretrained(ckpt)
    _word_tokenizer(ckpt)
    out = tmp_path / "run.zarr"
    assert main(["--model", "hf", "--checkpoint-path", str(ckpt), "--roles", "full", "--layers", "0",
                 "--batch-size", "2", "--max-batches", "1", "--output-dir", str(out), "--quiet"]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(ckpt)
    with actstore.open(out) as store:
        s = store.samples()
        enc = tok(s["prompt"], padding=True)
        assert np.asarray(s["prompt_ids"]).tolist() == enc["input_ids"]
        assert np.asarray(s["instruction_mask"]).astype(int).tolist() == enc["attention_mask"]
        assert store.num_rows("full") == int(np.sum(enc["attention_mask"]))

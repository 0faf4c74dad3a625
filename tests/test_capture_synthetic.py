"""Synthetic observations and the offline word tokenizer."""

from __future__ import annotations

import torch

from capture import LIBERO_TASKS, SyntheticConfig, make_batch, synthetic_batches, tokenize


def test_tokenize_layout():
    ids, mask = tokenize(["put the black bowl on the plate", "a"], max_len=6, vocab_size=512)
    assert ids.shape == (2, 6) and mask.dtype == torch.bool
    assert ids[0, 0] == 2 and mask[0].all()  # BOS, truncated to max_len
    assert mask[1].tolist() == [True, True, True, False, False, False] and ids[1, 2] == 3  # BOS a \n
    assert int(ids.max()) < 512


def test_batches_reproducible_and_numbered():
    cfg = SyntheticConfig(batch_size=3, image_size=28, seed=5)
    a = list(synthetic_batches(cfg, 0, 2))
    b = make_batch(cfg, 1)
    assert torch.equal(a[1].images[0], b.images[0]) and a[1].prompt == b.prompt
    assert a[1].sample.tolist() == [3, 4, 5]
    assert all(p in LIBERO_TASKS for p in b.prompt)
    assert float(b.images[0].min()) >= -1 and float(b.images[0].max()) <= 1

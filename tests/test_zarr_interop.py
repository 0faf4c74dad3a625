"""Interoperability with zarr-python's own ShardingCodec: its shards are byte-identical to ours, and we read them.

actstore writes its shards by hand (the fast path); this module keeps that honest against an independent encoder.
zarr-python is given the very ``zarr.json`` of one of our arrays and writes the same values through its own
``sharding_indexed`` codec chain; every chunk file must come out byte for byte as ours, and a store whose chunk
files were written by zarr-python must read back the same values through ``ActStore``.

The one exception is ``bytesplit``: its frames are standard blosc (zstd, byte shuffle) that actstore writes with its
own per-plane choices, so zarr-python's encoder makes other bytes for the same values. There every block of
zarr-python's shards must decode through actstore's codec, and every block of ours through zarr-python.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import actstore


def _chunk_files(array_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(array_dir)): p.read_bytes()
        for p in sorted(array_dir.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


@pytest.mark.parametrize("codec", actstore.CODECS)
@pytest.mark.parametrize("n_rows", [64 * 4, 300])  # whole chunks only, and a partial last chunk and block
def test_zarr_python_shards_are_byte_identical_and_readable(tmp_path: Path, codec: str, n_rows: int) -> None:
    values = torch.randn(n_rows, 12, generator=torch.Generator().manual_seed(n_rows)).to(torch.bfloat16)
    bits = values.view(torch.uint16).numpy()
    store = tmp_path / "s.zarr"
    with actstore.create(store, codec=codec, chunk_rows=64, block_rows=16) as w:
        w.append(
            "r",
            rows={"sample": np.arange(n_rows), "step": np.zeros(n_rows, int), "position": np.zeros(n_rows, int)},
            acts={3: values},
        )
    ours = store / "acts" / "r" / "3"

    # zarr-python writes the same values into an array with our exact metadata (its own ShardingCodec)
    theirs = tmp_path / "zarr_python.zarr"
    theirs.mkdir()
    (theirs / "zarr.json").write_text((ours / "zarr.json").read_text())
    z = zarr.open_array(theirs, mode="r+")
    assert json.loads((ours / "zarr.json").read_text())["codecs"][0]["name"] == "sharding_indexed"
    z[:] = bits

    ours_files, theirs_files = _chunk_files(ours), _chunk_files(theirs)
    assert sorted(ours_files) == sorted(theirs_files)
    if codec == "bytesplit":
        _blocks_decode_across(theirs_files, bits)
        return
    for name in ours_files:
        assert ours_files[name] == theirs_files[name], f"chunk {name} differs from zarr-python's encoding"

    # a store whose chunk files zarr-python wrote reads back through actstore
    for name in theirs_files:
        shutil.copyfile(theirs / name, ours / name)
    got = actstore.ActStore.open(store)[3, "r"][:]
    assert got.dtype == torch.bfloat16
    np.testing.assert_array_equal(got.view(torch.uint16).numpy(), bits)


def _blocks_decode_across(theirs_files: dict[str, bytes], bits: np.ndarray) -> None:
    """Every block of zarr-python's shards decodes through actstore's codec to the values it holds (16-row blocks
    of 64-row chunks, zero-padded at the end)."""
    from actstore.format._codec import BlockCodec, split_shard

    codec = BlockCodec("bytesplit", np.dtype("<u2"))
    padded = np.zeros((-(-bits.shape[0] // 64) * 64, bits.shape[1]), dtype=np.uint16)
    padded[: bits.shape[0]] = bits
    for name, data in theirs_files.items():
        chunk = int(name.split("/")[1])
        for b, blob in enumerate(split_shard(data, 4, where=name)):
            lo = chunk * 64 + b * 16
            if blob is None:
                assert lo >= bits.shape[0]
                continue
            out = np.empty((16, bits.shape[1]), dtype=np.uint16)
            codec.decode(blob, out, where=f"{name} block {b}")
            np.testing.assert_array_equal(out, padded[lo : lo + 16])

"""StoreConfig validation."""

from __future__ import annotations

import pytest

from actstore import StoreConfig


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"codec": "gzip"}, r"valid codecs are \['lz4', 'zstd', 'bytesplit', 'none'\]"),
        ({"chunk_rows": 0}, "positive int"),
        ({"chunk_rows": 100, "block_rows": 30}, "must divide"),
        ({"commit_interval_s": -1}, ">= 0"),
        ({"threads": -2}, "threads"),
        ({"max_prompt_bytes": 1.5}, "positive int"),
    ],
)
def test_invalid_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StoreConfig(**kwargs)


def test_defaults_are_the_measured_choice() -> None:
    c = StoreConfig()
    assert (c.codec, c.chunk_rows, c.blocks) == ("lz4", 4096, 256)
    assert StoreConfig(codec="zstd").blocks == 1024
    assert StoreConfig(codec="zstd", chunk_rows=512).blocks == 512
    assert StoreConfig(codec="zstd", block_rows=64).blocks == 64

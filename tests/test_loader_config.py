"""LoaderConfig validation (no I/O) and rank resolution."""

from __future__ import annotations

import pytest

from actstore import LoaderConfig


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"shuffle_chunks": -1}, "shuffle_chunks"),
        ({"prefetch": 0}, "prefetch"),
        ({"seed": -3}, "seed"),
        ({"dtype": "int8"}, "valid dtypes"),
        ({"world_size": 0}, "world_size"),
        ({"rank": 2, "world_size": 2}, r"rank must be an int in \[0, 2\)"),
        ({"pin_memory": True, "device": "cpu"}, "pin_memory only helps"),
    ],
)
def test_invalid(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LoaderConfig(**kwargs)


def test_ranks_default_to_one_process() -> None:
    assert LoaderConfig().ranks() == (0, 1)
    assert LoaderConfig(rank=1, world_size=3).ranks() == (1, 3)

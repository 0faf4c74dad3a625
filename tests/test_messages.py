"""Writer messages: a Mark copies a commit record's counts and answers each array's rows like the record does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from actstore.format._format import (
    SAMPLE_KEYS,
    acts_key,
    cond_acts_key,
    cond_rows_key,
    rows_key,
)
from actstore.format._record import Commit, freeze
from actstore.write._messages import Append, Mark


def test_mark_of_a_commit_record_is_a_copy_with_the_same_rows() -> None:
    record = Commit(3, None, freeze({"a": 10, "b": 7}), freeze({"adarms": 4}), 2, freeze({"i": [1]}))
    mark = Mark.of(record)
    assert mark.roles == {"a": 10, "b": 7} and mark.samples == 2 and mark.progress == {"i": [1]}
    mark.roles["a"] = 99  # type: ignore[index] - the mark's counts are its own (the producer's mutable copy)
    mark.progress["i"].append(2)  # type: ignore[index]
    assert record.roles["a"] == 10 and record.progress == {"i": (1,)}
    mark = Mark.of(record)
    want = {rows_key("a"): 10, acts_key("a", "6"): 10, acts_key("b", "0"): 7, rows_key("c"): 0,
            cond_rows_key("adarms"): 4, cond_acts_key("adarms"): 4, cond_acts_key("other"): 0,
            **{key: 2 for key in SAMPLE_KEYS.values()}}
    for key, n in want.items():
        assert mark.rows(key) == record.rows(key) == n, key


def test_messages_are_frozen() -> None:
    msg = Append((("acts/r/0", np.zeros((1, 2), np.float32)),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.done = None  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Mark({}, {}, 0, None).samples = 1  # type: ignore[misc]

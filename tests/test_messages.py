"""Writer messages: a Mark copies a commit record's counts and answers each array's rows like the record does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from actstore.format._format import (
    SAMPLE_KEYS,
    acts_key,
    committed_rows,
    cond_acts_key,
    cond_rows_key,
    rows_key,
)
from actstore.write._messages import Append, Mark


def test_mark_of_a_commit_record_is_a_copy_with_the_same_rows() -> None:
    record = {"seq": 3, "roles": {"a": 10, "b": 7}, "conds": {"adarms": 4}, "samples": 2, "progress": {"i": 1}}
    mark = Mark.of(record)
    record["roles"]["a"] = 99  # the mark does not follow later edits of the record
    assert mark.roles == {"a": 10, "b": 7} and mark.samples == 2 and mark.progress == {"i": 1}
    record["roles"]["a"] = 10
    for key in (rows_key("a"), acts_key("a", "6"), acts_key("b", "0"), rows_key("c"), cond_rows_key("adarms"),
                cond_acts_key("adarms"), cond_acts_key("other"), *SAMPLE_KEYS.values()):
        assert mark.rows(key) == committed_rows(key, record), key


def test_messages_are_frozen() -> None:
    msg = Append((("acts/r/0", np.zeros((1, 2), np.float32)),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.done = None  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Mark({}, {}, 0, None).samples = 1  # type: ignore[misc]

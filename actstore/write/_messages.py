"""What :class:`~actstore.write._writer.StoreWriter` tells its writer thread: small frozen messages, one per kind.

The producer puts them on the :class:`~actstore.write._queue.ByteQueue` in call order; the writer thread
(:mod:`actstore.write._write_thread`) handles each kind in one place. A :class:`Mark` is the row counts at a consistent
point (what a commit record makes visible).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..format._record import Commit as CommitRecord
from ..format._record import Spec, rows_of, thaw

__all__ = ["Append", "Close", "Commit", "Declare", "Done", "Flush", "IntervalPassed", "Mark", "Message", "Rollback"]

Done = Callable[[], None] | None
"""Called on the writer thread once an append's arrays are copied (the caller may reuse them then)."""


@dataclass(frozen=True)
class Mark:
    """Rows appended up to a consistent point and the caller's progress then: what a commit makes visible."""

    roles: Mapping[str, int]
    """Rows per role."""
    conds: Mapping[str, int]
    """Rows per conditioning array."""
    samples: int
    """Rows of the samples table."""
    progress: dict[str, Any] | None
    """The caller's JSON progress record (``commit(progress=...)``), stored in the commit."""

    @classmethod
    def of(cls, commit: CommitRecord) -> Mark:
        """The counts and progress of a commit, copied."""
        return cls(dict(commit.roles), dict(commit.conds), commit.samples, thaw(commit.progress))

    def rows(self, key: str) -> int:
        """Rows of array ``key`` at this mark."""
        return rows_of(key, self.roles, self.conds, self.samples)


@dataclass(frozen=True)
class Declare:
    """A role, cond or the samples table appears: record its spec and create its arrays."""

    kind: str
    """``"role"``, ``"cond"`` or ``"samples"``."""
    name: str
    """The role or cond name (``"samples"`` for the samples table)."""
    spec: Spec
    """Its entry in the metadata record (frozen)."""


@dataclass(frozen=True)
class Append:
    """Rows for some arrays: copied into their chunk buffers; full chunks go to the encode pool."""

    arrays: tuple[tuple[str, np.ndarray], ...]
    """(array key, rows in storage dtype) pairs, all of the same row count."""
    done: Done = None
    """Called once the rows are copied."""
    finite: bool = False
    """The caller checked that the activation arrays hold no NaN/Inf (on the GPU): their blocks are not counted."""


@dataclass(frozen=True)
class Commit:
    """A consistent point: commit it once ``commit_interval_s`` has passed since the last commit."""

    mark: Mark


@dataclass(frozen=True)
class Rollback:
    """Forget the rows appended after ``mark`` (the last commit point)."""

    mark: Mark


@dataclass(frozen=True)
class Flush:
    """Commit ``mark`` now; ``done`` is set afterwards, also when the writer failed."""

    mark: Mark
    done: threading.Event


@dataclass(frozen=True)
class Close:
    """Commit ``mark`` (None: only a mark still pending from an earlier :class:`Commit`), wait for every write
    to finish and stop the thread."""

    mark: Mark | None


@dataclass(frozen=True)
class IntervalPassed:
    """Not sent by the producer: the writer thread's own wake-up when a pending commit is due."""


Message = Declare | Append | Commit | Rollback | Flush | Close | IntervalPassed

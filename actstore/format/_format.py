"""The on-disk format: version, names, dtypes, array keys and the metadata record's checksum.

The record itself is parsed (and so validated) into typed, frozen objects by :mod:`actstore.format._record`.
Nothing is unpickled or evaluated.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._errors import InvalidNameError, SchemaMismatchError

FORMAT_VERSION = 4
"""Bumped on any change an older reader could misread. Version 2 adds the record's ``checksum``; version 3 the
block sums (``layout.blocksums``, :mod:`actstore.read._blocksums`); version 4 the ``bytesplit`` codec. Records of
every earlier version are still read."""

CHECKSUM_FIELD = "checksum"
"""Field of the metadata record holding ``sha256:<hex>`` of the canonical JSON of every other field."""
_CHECKSUM_PREFIX = "sha256:"

META_KEY = "actstore"
"""Name of the root attribute that holds the metadata document."""

NO_STEP = -1
"""``step`` value of rows that belong to no denoising step (prefix-only roles such as ``instruction``)."""

ROW_COLUMNS: tuple[str, ...] = ("sample", "step", "position")
"""Columns every role's row table has, in this order; extra integer columns follow."""

COND_COLUMNS: tuple[str, ...] = ("sample", "step")
"""Columns of every conditioning table."""

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")

# name -> (torch dtype, numpy storage dtype). bfloat16 is stored as its uint16 bits.
DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "bfloat16": (torch.bfloat16, np.dtype("<u2")),
    "float16": (torch.float16, np.dtype("<f2")),
    "float32": (torch.float32, np.dtype("<f4")),
    "float64": (torch.float64, np.dtype("<f8")),
}
_TORCH_TO_NAME = {t: n for n, (t, _) in DTYPES.items()}


def check_name(name: object, what: str) -> str:
    """Return ``name`` as a safe path component, or raise :class:`InvalidNameError`."""
    if isinstance(name, bool) or not isinstance(name, (int, str)):
        raise InvalidNameError(f"{what} name must be a str or a non-negative int, got {name!r}")
    if isinstance(name, int) and name < 0:
        raise InvalidNameError(f"{what} {name!r} is negative; layers are numbered from 0")
    text = str(name)
    if not _NAME_RE.fullmatch(text) or text.endswith(".json"):
        raise InvalidNameError(
            f"{what} name {text!r} cannot be used: names are 1-128 characters of letters, digits, '_', '.', '-', "
            "do not start with '.' or '-', and contain no '/', '..' prefix, NUL or control characters"
        )
    return text


def dtype_name(dtype: torch.dtype | np.dtype) -> str:
    """The format's name for a torch or numpy floating dtype."""
    if isinstance(dtype, torch.dtype):
        name = _TORCH_TO_NAME.get(dtype)
    else:
        dt = np.dtype(dtype)
        name = dt.name if dt.name in DTYPES else None
    if name is None:
        raise SchemaMismatchError(f"activations of dtype {dtype} cannot be stored; valid dtypes are {list(DTYPES)}")
    return name


def to_storage(values: Any) -> tuple[np.ndarray, str]:
    """View a CPU tensor or numpy array of activations as its storage array (bf16 -> uint16 bits), no copy."""
    if isinstance(values, torch.Tensor):
        if values.device.type != "cpu":
            raise SchemaMismatchError(f"activations must be on the CPU, got a tensor on {values.device}")
        name = dtype_name(values.dtype)
        t = values.detach()
        if not t.is_contiguous():
            t = t.contiguous()
        if name == "bfloat16":
            return t.view(torch.uint16).numpy(), name
        return t.numpy(), name
    arr = np.asarray(values)
    if arr.dtype.name == "bfloat16":  # ml_dtypes
        return np.ascontiguousarray(arr).view("<u2"), "bfloat16"
    name = dtype_name(arr.dtype)
    return np.ascontiguousarray(arr, dtype=DTYPES[name][1]), name


def from_storage(arr: np.ndarray, name: str) -> torch.Tensor:
    """Turn a storage array back into a tensor of the recorded dtype, no copy."""
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if name == "bfloat16" else t


def acts_key(role: str, layer: str) -> str:
    return f"acts/{role}/{layer}"


def rows_key(role: str) -> str:
    return f"rows/{role}"


def cond_acts_key(name: str) -> str:
    return f"cond/{name}/acts"


def cond_rows_key(name: str) -> str:
    return f"cond/{name}/rows"


SAMPLE_KEYS = {
    "table": "samples/table",
    "instruction_mask": "samples/instruction_mask",
    "prompt_ids": "samples/prompt_ids",
    "prompt": "samples/prompt",
}


@dataclass(frozen=True)
class ArraySpec:
    """One stored array as the schema declares it."""

    key: str
    width: int
    dtype: np.dtype
    """Storage dtype."""
    logical: str | None = None
    """Activation dtype name for activation arrays (their NaN/Inf are counted), None for tables."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------- checksum


def canonical_json(meta: Mapping[str, Any]) -> bytes:
    """The bytes the checksum covers: every field but ``checksum``, keys sorted, no whitespace, ASCII only (so
    two spellings of one value, e.g. an escaped and a raw ``é``, hash alike and any changed value does not)."""
    rest = {k: v for k, v in meta.items() if k != CHECKSUM_FIELD}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def record_checksum(meta: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of :func:`canonical_json`."""
    return _CHECKSUM_PREFIX + hashlib.sha256(canonical_json(meta)).hexdigest()


def seal_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the JSON record ``meta`` as it is written: ``format_version`` set to :data:`FORMAT_VERSION` and
    ``checksum`` last (:meth:`actstore.format._record.Record.seal` goes through it)."""
    out = {k: v for k, v in meta.items() if k != CHECKSUM_FIELD}
    out["format_version"] = FORMAT_VERSION
    out[CHECKSUM_FIELD] = record_checksum(out)
    return out

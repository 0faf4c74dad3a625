"""CPU: forward time of the reference pi0.5 with capture (3 layers x decision + instruction) vs without.

Prints the ratio and the sustained rate into the store (bytes handed to the writer / wall time including the
final flush). ``--smoke`` runs tiny and fast (used by a test).

    python benchmarks/bench_capture_cpu.py [--batch-size 8] [--reps 5] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import actstore  # noqa: E402
from capture import Recorder, ReferenceConfig, ReferencePi05, SyntheticConfig, adapter_for, make_batch  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--codec", default="lz4")
    ap.add_argument("--smoke", action="store_true", help="tiny and fast")
    args = ap.parse_args(argv)
    image = 224
    if args.smoke:
        args.batch_size, args.steps, args.reps, image = 2, 2, 2, 56
    model = ReferencePi05(ReferenceConfig(image_size=image))
    adapter = adapter_for(model)
    batches = [make_batch(SyntheticConfig(batch_size=args.batch_size, image_size=image), i)
               for i in range(args.reps + 1)]
    sites = adapter.sites([6, 10, 14], ["decision", "instruction"])

    plain, captured = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.zarr")
        t_all = time.perf_counter()
        with actstore.create(path, attrs={"model": {"name": "reference"}}, codec=args.codec) as w:
            rec = Recorder(model, w, sites)
            for i, obs in enumerate(batches):  # interleaved, so load drift hits both the same; batch 0 warms up
                t = time.perf_counter()
                adapter.run(model, obs, args.steps)
                t_plain = time.perf_counter() - t
                with rec:
                    t = time.perf_counter()
                    with rec.batch(adapter.context(model, obs), progress={"batches": i + 1}):
                        adapter.run(model, obs, args.steps)
                    t_cap = time.perf_counter() - t
                if i:
                    plain.append(t_plain)
                    captured.append(t_cap)
        wall = time.perf_counter() - t_all - sum(plain)
        nbytes = rec.bytes_written
    result = {
        "batch_size": args.batch_size, "steps": args.steps, "reps": args.reps, "codec": args.codec,
        "forward_s": statistics.median(plain), "forward_capture_s": statistics.median(captured),
        "bytes": nbytes, "capture_wall_s": wall,
    }
    result["ratio"] = result["forward_capture_s"] / result["forward_s"]
    result["store_gb_per_s"] = nbytes / wall / 1e9
    print(f"reference pi0.5, batch {args.batch_size}, {args.steps} steps, 3 layers x (decision, instruction)")
    print(f"  forward, no capture : {result['forward_s'] * 1e3:8.1f} ms (median of {args.reps})")
    print(f"  forward, capture    : {result['forward_capture_s'] * 1e3:8.1f} ms")
    print(f"  ratio               : {result['ratio']:.3f}x")
    print(f"  into the store      : {nbytes / 1e6:.2f} MB in {wall:.2f} s of capture (incl. final flush) = "
          f"{result['store_gb_per_s']:.4f} GB/s")
    return result


if __name__ == "__main__":
    main()

"""GPU: forward time of a Gemma-2B-shaped decoder with capture of 3 full residual layers, four ways.

Batch 32 x 816 tokens, layers 6/10/14, bf16, random weights (transformers GemmaConfig/GemmaModel: hidden 2048,
18 layers, intermediate 16384, 8 heads, 1 kv head, head_dim 256). Modes, each timed as the median of N forwards
(CUDA synchronize around each, warm-up first):

- ``none``: no hooks (the baseline);
- ``recorder``: our Recorder, ``full`` selector, writer to a local zarr store (pinned ring, side stream; NaN/Inf
  checked on the GPU before each copy, as ``nonfinite="count"`` does); the store is read back after close and
  every row counted (``rows_stored`` against ``rows_expected``);
- ``recorder_allow`` (``--compare-nonfinite``): the same with ``nonfinite="allow"`` (no check on the GPU, no
  count), so the difference is what the NaN/Inf accounting costs the forward;
- ``detach_cpu``: hooks doing ``.detach().cpu()`` (what most scripts do);
- ``cpu_save``: the same plus ``torch.save`` of the batch's tensors per forward.

Prints a table with ratios and writes JSON to ``--out``. Without CUDA it prints "no CUDA device; skipped" and exits
0, unless ``--smoke`` (tiny model, runs on CPU too; used by a test).

    python benchmarks/bench_capture_gpu.py --out benchmarks/results/capture_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYERS = (6, 10, 14)


def _build(smoke: bool, device: str):
    from transformers import GemmaConfig, GemmaModel

    if smoke:
        cfg = GemmaConfig(hidden_size=64, num_hidden_layers=16, intermediate_size=128, num_attention_heads=8,
                          num_key_value_heads=1, head_dim=8, vocab_size=128)
    else:
        cfg = GemmaConfig(hidden_size=2048, num_hidden_layers=18, intermediate_size=16384, num_attention_heads=8,
                          num_key_value_heads=1, head_dim=256, vocab_size=1024)  # vocab unused: inputs_embeds
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = GemmaModel(cfg).to(dtype).eval()
    return model, cfg, dtype


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, n: int, warmup: int, device: str) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(n):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--n", type=int, default=10, help="timed forwards per mode")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=816)
    ap.add_argument("--codec", default="lz4")
    ap.add_argument("--ring", type=int, default=16, help="pinned ring size, in forwards' worth of buffers")
    ap.add_argument("--compare-nonfinite", action="store_true",
                    help="also time the Recorder with nonfinite='allow' (no NaN/Inf check)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, a few forwards (runs on CPU too)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("no CUDA device; skipped")
        return None
    if args.smoke:
        args.n, args.warmup, args.batch, args.tokens = 2, 1, 2, 16
    device = "cuda" if cuda else "cpu"

    import actstore
    from capture import BatchContext, Recorder, RecorderConfig, Site, full

    model, cfg, dtype = _build(args.smoke, device)
    x = torch.randn(args.batch, args.tokens, cfg.hidden_size, device=device, dtype=dtype)
    layers = {i: model.layers[i] for i in LAYERS}
    per_fwd = len(LAYERS) * args.batch * args.tokens * cfg.hidden_size * x.element_size()

    def forward():
        with torch.no_grad():
            model(inputs_embeds=x)

    results: dict[str, dict] = {}
    results["none"] = {"times": _time(forward, args.n, args.warmup, device)}

    def record(nonfinite: str) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "bench.zarr")
            sites = [Site(i, "full", f"layers.{i}", full) for i in LAYERS]
            counter = iter(range(10**9))
            per_layer = per_fwd // len(LAYERS)
            ring = args.ring * len(LAYERS)  # buffers: ring forwards' worth of layer copies, pinned up front
            cfg_rec = RecorderConfig(buffer_bytes=per_layer * ring, cond_kwarg=None)
            t_all = time.perf_counter()
            with actstore.create(path, attrs={"model": {"name": "gemma-2b-shaped"}}, codec=args.codec,
                                 nonfinite=nonfinite) as w, Recorder(model, w, sites, cfg_rec) as rec:
                rec.reserve(per_layer, ring, pin=cuda)

                def recorded():
                    i = next(counter)
                    ctx = BatchContext(sample=torch.arange(i * args.batch, (i + 1) * args.batch))
                    with rec.batch(ctx, progress={"batches": i + 1}):
                        forward()

                times = _time(recorded, args.n, args.warmup, device)
            wall = time.perf_counter() - t_all
            with actstore.ActStore.open(path) as store:  # every row of every forward, warm-up included
                stored = store.num_rows("full")
        return {"times": times, "store_wall_s": wall, "bytes": rec.bytes_written, "nonfinite": nonfinite,
                "backpressure_waits": rec.backpressure_waits, "ring_buffers": ring,
                "rows_expected": (args.n + args.warmup) * args.batch * args.tokens, "rows_stored": stored}

    results["recorder"] = record("count")
    if args.compare_nonfinite:
        results["recorder_allow"] = record("allow")

    def run_with(hook_fn):
        handles = [m.register_forward_hook(hook_fn) for m in layers.values()]
        try:
            return _time(forward, args.n, args.warmup, device)
        finally:
            for h in handles:
                h.remove()

    results["detach_cpu"] = {"times": run_with(lambda m, a, o: _keep.append(_out(o).detach().cpu()))}
    _keep.clear()
    with tempfile.TemporaryDirectory() as tmp:
        n = iter(range(10**9))

        def save_forward():
            forward()
            torch.save(list(_keep), Path(tmp) / f"b{next(n)}.pt")
            _keep.clear()

        handles = [m.register_forward_hook(lambda m, a, o: _keep.append(_out(o).detach().cpu())) for m in layers.values()]
        try:
            results["cpu_save"] = {"times": _time(save_forward, args.n, args.warmup, device)}
        finally:
            for h in handles:
                h.remove()
    _keep.clear()

    base = statistics.median(results["none"]["times"])
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}; batch {args.batch} x {args.tokens} tokens, "
          f"layers {list(LAYERS)}, {per_fwd / 1e6:.0f} MB captured per forward, median of {args.n}")
    print(f"{'mode':<12} {'median s':>10} {'ratio':>8}")
    for mode, r in results.items():
        r["median_s"] = statistics.median(r["times"])
        r["ratio"] = r["median_s"] / base
        print(f"{mode:<12} {r['median_s']:>10.4f} {r['ratio']:>7.3f}x")
    rec_r = results["recorder"]
    print(f"recorder: {rec_r['bytes'] / 1e9:.2f} GB into the store in {rec_r['store_wall_s']:.1f} s incl. flush "
          f"({rec_r['bytes'] / rec_r['store_wall_s'] / 1e9:.2f} GB/s), backpressure waits {rec_r['backpressure_waits']}, "
          f"rows stored {rec_r['rows_stored']} of {rec_r['rows_expected']}")
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "batch": args.batch, "tokens": args.tokens,
           "layers": list(LAYERS), "bytes_per_forward": per_fwd, "codec": args.codec, "n": args.n,
           "modes": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


_keep: list[torch.Tensor] = []


def _out(o):
    return o if torch.is_tensor(o) else o[0]


if __name__ == "__main__":
    main()

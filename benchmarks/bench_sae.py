"""TopK SAE training step: the sparse forward (decode by index) against the dense formulation, in one run.

    python -m benchmarks.bench_sae              # d = 512, 1024, 2048; 8x latents, k=32, batches of 1024 (CPU)
    python -m benchmarks.bench_sae --smoke      # tiny, seconds (the test runs this)
    python -m benchmarks.bench_sae --device cuda --batch 4096

One training step = forward, MSE loss, backward, Adam step, decoder renormalisation, as in
``examples/train_sae.py``. ``sparse`` is ``TopKSAE.forward`` (encoder matmul + top-k, ``embedding_bag`` decode over
the k active decoder rows); ``dense`` is ``TopKSAE.forward_dense`` (top-k scattered into a dense code matrix,
``z @ W_dec``: the textbook formulation and what this example did before). Both start from the same weights and
see the same batches; the rounds alternate the order. Before timing, one step of each is compared: the
reconstructions and every gradient must agree within float tolerance, or the run fails.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import tyro

from actstore.train._sae import TopKSAE

__all__ = ["main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(sae: TopKSAE, opt: torch.optim.Optimizer, x_BD: torch.Tensor, dense: bool) -> torch.Tensor:
    xhat_BD, _ = sae.forward_dense(x_BD) if dense else sae(x_BD)
    loss = (xhat_BD - x_BD).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sae.normalize_decoder()
    return loss.detach()


def check_same(d: int, m: int, k: int, batch: int, device: torch.device) -> dict[str, float]:
    """Largest relative difference between the sparse and dense paths: reconstruction and each gradient."""
    x_BD = torch.randn(batch, d, generator=torch.Generator().manual_seed(1)).to(device)
    out: dict[str, float] = {}
    grads = []
    for dense in (False, True):
        sae = TopKSAE(d, m, k, seed=0).to(device)
        with torch.no_grad():
            sae.b_dec.copy_(0.1 * torch.randn(d, generator=torch.Generator().manual_seed(2)))
        xhat, _ = sae.forward_dense(x_BD) if dense else sae(x_BD)
        (xhat - x_BD).pow(2).mean().backward()
        grads.append({"x_hat": xhat.detach(), **{n: p.grad for n, p in sae.named_parameters()}})
    for name, a in grads[0].items():
        b = grads[1][name]
        out[name] = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
    return out


def bench_one(d: int, m: int, k: int, batch: int, steps: int, rounds: int, device: torch.device) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(batch, d, generator=g).to(device) for _ in range(steps)]
    models = {}
    for name in ("sparse", "dense"):
        sae = TopKSAE(d, m, k, seed=0).to(device)
        models[name] = (sae, torch.optim.Adam(sae.parameters(), lr=1e-4))
    times: dict[str, list[float]] = {"sparse": [], "dense": []}
    for r in range(rounds + 1):  # round 0 warms up (allocator, threads)
        order = ("sparse", "dense") if r % 2 else ("dense", "sparse")
        for name in order:
            sae, opt = models[name]
            _sync(device)
            t0 = time.perf_counter()
            for x in xs:
                _step(sae, opt, x, dense=name == "dense")
            _sync(device)
            if r:
                times[name].append(time.perf_counter() - t0)
    res: dict[str, Any] = {"d": d, "d_sae": m, "k": k, "batch": batch, "steps_per_round": steps}
    for name, ts in times.items():
        tok = [batch * steps / t for t in ts]
        res[name] = {"tokens_per_s": statistics.median(tok), "best_tokens_per_s": max(tok), "values": tok,
                     "spread": (max(tok) - min(tok)) / statistics.median(tok)}
    res["speedup"] = res["sparse"]["tokens_per_s"] / res["dense"]["tokens_per_s"]
    res["speedup_best"] = res["sparse"]["best_tokens_per_s"] / res["dense"]["best_tokens_per_s"]
    res["max_rel_diff"] = check_same(d, m, k, min(batch, 256), device)
    return res


def main(
    smoke: bool = False,
    dims: tuple[int, ...] = (512, 1024, 2048),
    expansion: int = 8,
    k: int = 32,
    batch: int = 1024,
    steps: int = 3,
    rounds: int = 3,
    device: str = "cpu",
    out: Path = Path("benchmarks/results/sae_cpu.json"),
) -> dict[str, Any]:
    """Time both forward paths at each width and write JSON + a markdown table.

    Args:
        smoke: tiny sizes (d=32, 64), one round; finishes in seconds.
        dims: model widths d (latents = expansion * d).
        expansion: latents per input dimension.
        k: active latents per token.
        batch: tokens per step.
        steps: steps per timed round.
        rounds: timed rounds (after one warm-up round), alternating which path goes first.
        device: torch device.
        out: where to write the JSON (the table goes beside it as .md).
    """
    if smoke:
        dims, batch, steps, rounds, k = (32, 64), 64, 2, 1, 4
    dev = torch.device(device)
    t_start = time.perf_counter()
    load = os.getloadavg()
    results = [bench_one(d, expansion * d, k, batch, steps, rounds, dev) for d in dims]
    worst = max(v for r in results for v in r["max_rel_diff"].values())
    res = {"benchmark": "bench_sae", "smoke": smoke, "device": device, "results": results,
           "max_rel_diff_any": worst, "total_s": time.perf_counter() - t_start,
           "env": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                   "torch_threads": torch.get_num_threads(), "loadavg_start": load, "loadavg_end": os.getloadavg()}}
    lines = [f"TopK SAE training step on {device} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
             f"load average {load[0]:.1f}): batch {batch}, k={k}, {expansion}x latents, Adam; median of {rounds} "
             "interleaved rounds (best round in brackets)", "",
             "| d | latents | dense tokens/s | sparse tokens/s | sparse / dense | max rel. diff (x_hat, grads) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        dn, sp = r["dense"], r["sparse"]
        lines.append(f"| {r['d']} | {r['d_sae']} | {dn['tokens_per_s']:,.0f} ({dn['best_tokens_per_s']:,.0f}) | "
                     f"{sp['tokens_per_s']:,.0f} ({sp['best_tokens_per_s']:,.0f}) | {r['speedup']:.2f}x "
                     f"({r['speedup_best']:.2f}x) | "
                     f"{max(r['max_rel_diff'].values()):.1e} |")
    text = "\n".join(lines)
    res["table_markdown"] = text
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"\nJSON: {out}")
    return res


if __name__ == "__main__":
    result = tyro.cli(main)
    sys.exit(0 if result["max_rel_diff_any"] < 1e-3 else 1)

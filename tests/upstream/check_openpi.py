"""Capture from openpi's real ``PI0Pytorch`` (pi05=True and False, tiny random) and compare bit for bit.

Run in the upstream venv by tests/test_capture_upstream.py; prints one JSON object (the last stdout line).
``--cli``: also save the tiny pi0.5 as openpi's converter does (``model.safetensors`` + ``config.json``) and capture
through ``python -m capture --model openpi --checkpoint-path .../model.safetensors`` (in process).
``steer``: steering along a tiny SAE's features on both models (``_steer_check.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402
from _steer_check import steer_case  # noqa: E402

CASES = [  # (cameras, image px, prompt lengths of the batch): 1/2/3 cameras, 224 / 256 / an odd size
    (1, 224, [3, 12, 7]),
    (2, 256, [12, 5, 9]),
    (3, 97, [1, 8, 12]),
]
STEPS = 3


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    """The attributes ``PI0Pytorch`` reads from openpi's ``Pi0Config`` (which imports jax)."""

    pi05: bool
    paligemma_variant: str = "tiny_vlm"
    action_expert_variant: str = "tiny_expert"
    dtype: str = "float32"
    action_dim: int = 32
    action_horizon: int = 10
    max_token_len: int = 12
    pytorch_compile_mode: str | None = None


def build(pi05: bool):
    from openpi.models_pytorch import gemma_pytorch, pi0_pytorch

    h.shrink_vision(gemma_pytorch)
    torch.manual_seed(0)
    model = pi0_pytorch.PI0Pytorch(TinyConfig(pi05=pi05)).eval()
    h.randomise_adarms(model)
    return model


def check_cli(model, tmp: Path) -> dict:
    """Save like openpi's converter, then capture through the CLI with --model openpi --checkpoint-path."""
    import safetensors.torch

    import actstore
    import capture
    from capture import _cli

    ckpt = tmp / "pi05_tiny_pytorch"
    ckpt.mkdir()
    safetensors.torch.save_model(model, str(ckpt / "model.safetensors"))
    (ckpt / "config.json").write_text(json.dumps({"action_dim": 32, "action_horizon": 10,
                                                  "paligemma_variant": "tiny_vlm",
                                                  "action_expert_variant": "tiny_expert", "precision": "float32"}))
    out = tmp / "cli.zarr"
    argv = ["capture", "--model", "openpi", "--checkpoint-path", str(ckpt / "model.safetensors"),
            "--output-dir", str(out), "--layers", "0", "3", "--roles", "decision", "instruction",
            "--batch-size", "2", "--max-batches", "1", "--num-steps", "2", "--quiet"]
    saved, sys.argv = sys.argv, argv
    try:
        rc = _cli.main()
        if rc not in (0, None):
            raise SystemExit(f"python -m capture {' '.join(argv[1:])} exited with {rc}")
    finally:
        sys.argv = saved
    loaded, adapter = capture.load_model(capture.ModelSpec(name="openpi", checkpoint_path=str(ckpt / "model.safetensors")))
    same_weights = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(),
                                                          strict=True))
    res = {"cli_loaded_weights_equal": bool(same_weights), "cli_adapter": adapter.name,
           "cli_horizon": int(loaded.config.action_horizon), "cli_pi05": bool(loaded.pi05)}
    # the CLI's store against independent hooks on the original model, same synthetic batch
    syn = capture.SyntheticConfig(batch_size=2, seed=0, action_horizon=10)
    obs = capture.make_batch(syn, 0)
    hooks = h.Hooks(model, model, {0: adapter.layer_paths["vlm"].format(i=0)},
                    {3: adapter.layer_paths["expert"].format(i=3)})
    try:
        adapter.run(model, obs, 2)
    finally:
        hooks.remove()
    store = actstore.ActStore.open(str(out))
    pad = hooks.prefix_pad[0]
    L = obs.lang_tokens.shape[1]
    P = pad.shape[1]
    b, j = torch.nonzero(pad[:, P - L:], as_tuple=True)
    rows = store.rows("instruction")
    o = h._sorted(rows)
    res["cli_instruction_bit_exact"] = bool(torch.equal(store[0, "instruction"][o], hooks.vlm[0][0][b, j + P - L]))
    dec = store.select(3, "decision", step=1)
    drows = {k: v[dec.row_index] for k, v in store.rows("decision").items()}
    res["cli_decision_bit_exact"] = bool(torch.equal(dec[h._sorted(drows)], hooks.exp[3][1][:, -10:].reshape(20, -1)))
    res["cli_store_model_attrs"] = store.attrs.get("model", {}).get("class")
    return res


def check_dtype(pi05: bool) -> dict:
    """load_model(dtype=bfloat16) keeps what upstream keeps in float32."""
    from capture._pi import cast_like_upstream

    model = cast_like_upstream(build(pi05), "cpu", torch.bfloat16)
    dt = {n: p.dtype for n, p in model.named_parameters()}
    keep = [n for n in dt if any(s in n for s in ("input_layernorm", "post_attention_layernorm", "model.norm",
                                                  "embeddings.patch_embedding", "embeddings.position_embedding"))]
    heads = [n for n in dt if n.split(".")[0] in ("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out",
                                                 "state_proj", "action_time_mlp_in", "action_time_mlp_out")]
    return {"bf16_kept_fp32": bool(keep) and all(dt[n] == torch.float32 for n in keep + heads),
            "bf16_layers_bf16": dt["paligemma_with_expert.paligemma.model.language_model.layers.0.mlp.up_proj.weight"]
            == torch.bfloat16}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # bit-exact comparisons of two runs
    h.setup()
    results: dict = {"cases": [], "timing": {}, "steer": {}}
    for pi05 in (True, False):
        t0 = time.perf_counter()
        model = build(pi05)
        results["timing"][f"build_pi05={pi05}"] = round(time.perf_counter() - t0, 2)
        for cams, size, lengths in CASES:
            t0 = time.perf_counter()
            obs = h.make_obs(cams, size, lengths, seed=cams)
            r = h.check_capture(model, obs, STEPS)
            r["pi05"] = pi05
            r["seconds"] = round(time.perf_counter() - t0, 2)
            results["cases"].append(r)
        results["steer"]["pi05" if pi05 else "pi0"] = steer_case(model, pi05, STEPS)
        if pi05 and args.cli:
            with tempfile.TemporaryDirectory() as tmp:
                results["cli"] = check_cli(model, Path(tmp))
        del model
        gc.collect()
    results["dtype"] = check_dtype(True)
    results["ok"] = all(h.all_ok(c) and c["has_cond"] == c["pi05"] for c in results["cases"]) and h.all_ok(
        results.get("cli", {})) and h.all_ok(results["dtype"]) and all(h.all_ok(r) for r in results["steer"].values())
    print(json.dumps(results))


if __name__ == "__main__":
    main()

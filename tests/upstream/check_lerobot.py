"""Capture from lerobot 0.4.4's real ``PI05Policy`` and ``PI0Policy`` (tiny random) and compare bit for bit.

Run in the upstream venv by tests/test_capture_upstream.py; prints one JSON object (the last stdout line).
lerobot accepts only the gemma_2b / gemma_300m variants, so ``get_gemma_config`` is replaced by tiny widths for
the test, and the vision tower is shrunk (see _harness.shrink_vision); everything else is lerobot's code.
``steer``: steering along a tiny SAE's features on both policies (``_steer_check.py``).
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402
from _steer_check import steer_case  # noqa: E402

CASES = [(1, 224, [3, 12, 7]), (2, 256, [12, 5, 9]), (3, 97, [1, 8, 12])]
STEPS = 3
CAMERAS = ("observation.images.base_0_rgb", "observation.images.left_wrist_0_rgb",
           "observation.images.right_wrist_0_rgb")


def build(policy: str):
    from lerobot.configs.types import FeatureType, PolicyFeature

    if policy == "pi05":
        from lerobot.policies.pi05 import configuration_pi05 as conf
        from lerobot.policies.pi05 import modeling_pi05 as mod

        cfg_cls, policy_cls = conf.PI05Config, mod.PI05Policy
    else:
        from lerobot.policies.pi0 import configuration_pi0 as conf
        from lerobot.policies.pi0 import modeling_pi0 as mod

        cfg_cls, policy_cls = conf.PI0Config, mod.PI0Policy
    dims = {"gemma_2b": h.TINY["tiny_vlm"], "gemma_300m": h.TINY["tiny_expert"]}
    mod.get_gemma_config = lambda variant: mod.GemmaConfig(*dims[variant])
    h.shrink_vision(mod)
    features = {k: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 224, 224)) for k in CAMERAS}
    features["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(32,))
    cfg = cfg_cls(dtype="float32", chunk_size=10, n_action_steps=10, num_inference_steps=STEPS, device="cpu",
                  input_features=features,
                  output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(7,))})
    torch.manual_seed(0)
    model = policy_cls(cfg).eval()
    h.randomise_adarms(model)
    return model


def check_dtype(policy: str) -> dict:
    from capture._pi import cast_like_upstream

    model = cast_like_upstream(build(policy), "cpu", torch.bfloat16)
    dt = {n: p.dtype for n, p in model.named_parameters()}
    keep = [n for n in dt if any(s in n for s in ("input_layernorm", "post_attention_layernorm", "model.norm",
                                                  "embeddings.patch_embedding", "embeddings.position_embedding"))]
    heads = [n for n in dt if n.split(".")[1] in ("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out")]
    return {"bf16_kept_fp32": bool(keep) and bool(heads) and all(dt[n] == torch.float32 for n in keep + heads),
            "bf16_layers_bf16": dt["model.paligemma_with_expert.paligemma.model.language_model.layers.0.mlp.up_proj."
                                   "weight"] == torch.bfloat16}


def main() -> None:
    torch.set_num_threads(1)  # bit-exact comparisons of two runs
    h.setup()
    results: dict = {"cases": [], "timing": {}, "steer": {}}
    for policy in ("pi05", "pi0"):
        t0 = time.perf_counter()
        model = build(policy)
        results["timing"][f"build_{policy}"] = round(time.perf_counter() - t0, 2)
        for cams, size, lengths in CASES:
            t0 = time.perf_counter()
            r = h.check_capture(model, h.make_obs(cams, size, lengths, seed=cams), STEPS)
            r["policy"] = policy
            r["seconds"] = round(time.perf_counter() - t0, 2)
            results["cases"].append(r)
        results["steer"][policy] = steer_case(model, policy == "pi05", STEPS)
        del model
        gc.collect()
    results["dtype"] = check_dtype("pi05")
    results["ok"] = all(h.all_ok(c) and c["has_cond"] == (c["policy"] == "pi05") for c in results["cases"]) and \
        h.all_ok(results["dtype"]) and all(h.all_ok(r) for r in results["steer"].values())
    print(json.dumps(results))


if __name__ == "__main__":
    main()

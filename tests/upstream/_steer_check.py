"""Steering (``capture.steer_actions`` / ``capture.steering``) on an upstream pi0 / pi0.5 (run in the upstream venv).

With a tiny random ``actstore`` ``TopKSAE`` over the action expert's width, one observation and its noise:

- ``add`` with alpha = 0 (every step, a middle layer) and a clamp of a firing feature to its own code leave the
  action chunk bit-exact (and write a zero change);
- a clamp to 0 ablates: the actions change, and what the hook writes into the residual is exactly ``-z_f W_dec[f]``;
- a small ``add`` moves the actions along the velocity lens' prediction: ``dt * (head(norm(x + alpha w, cond)) -
  head(norm(x, cond)))`` summed over the steered steps (``dt = -1 / num_steps``, as openpi and lerobot integrate), with the model's own final expert norm and
  ``action_out_proj`` (``capture.layout_for``) and the ``adarms_cond`` the layer received; cosine of predicted vs
  observed change above the thresholds ``tests/test_capture_steer.py`` uses (0.9999 at the last layer and step,
  0.95 at a middle layer over every step), while the prediction for another feature's direction does not fit (a
  control: cosine below the same threshold); alpha and alpha / 2 give changes in the same direction, norm ratio 2;
- the instruction role (prompt tokens of the prefix, a direction of PaliGemma's width): alpha = 0 is bit-exact,
  alpha > 0 changes the actions (through the KV cache), and the hook fires once.

:func:`steer_case` runs them on the batch and layers the check scripts use: everything for a pi0.5 (two prompts), the
cheap part (no clamp to 0, no instruction role) for a pi0 (one prompt); about ten / seven model runs.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

LAYERS = {"mid": 1, "last": 3, "vlm_layer": 2}
"""Expert layers steered (a middle one, the last one of the depth-4 tiny stacks) and the PaliGemma layer."""
MIN_COS_LAST = 0.9999
"""The lens is the model's own readout at the last layer and step (as in tests/test_capture_steer.py)."""
MIN_COS_MID = 0.95
"""First order at a middle layer, every step (as in tests/test_capture_steer.py)."""


def _lens_prediction(model, layout, log, w: torch.Tensor, alpha: float, num_steps: int) -> torch.Tensor:
    norm = model.get_submodule(layout.expert_norm)
    head = model.get_submodule(layout.heads["action"])

    def read(x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        out = norm(x, c) if layout.adaptive else norm(x)
        return head(out[0] if isinstance(out, tuple) else out)

    pred = torch.zeros(())
    with torch.no_grad():
        for x, c in zip(log.resid, log.cond, strict=True):
            pred = pred + (-1.0 / num_steps) * (read(x + alpha * w, c) - read(x, c))
    return pred


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def check_steer(model, obs, num_steps: int, *, mid: int, last: int, vlm_layer: int, alpha: float = 1e-2,
                full: bool = True) -> dict:
    """The steering checks above on ``model`` (expert layers ``mid`` and ``last``, PaliGemma layer ``vlm_layer``);
    ``full=False`` leaves out the clamp to 0 and the instruction role (two model runs each)."""
    from actstore.train._sae import TopKSAE
    from capture import SteerSpec, adapter_for, layout_for, steer_actions, steering

    adapter, layout = adapter_for(model), layout_for(model)
    ctx = adapter.context(model, obs)
    width = int(model.get_submodule(layout.heads["action"]).in_features)
    sae = TopKSAE(width, 16, 4, seed=0).requires_grad_(False)
    res: dict = {"layout": layout.name, "expert_width": width, "alpha": alpha}

    def steered(spec: SteerSpec, record: bool = False, dirs=sae):
        with torch.no_grad(), steering(model, dirs, spec, ctx, adapter=adapter, record=record) as log:
            out = adapter.run(model, obs, num_steps)
        return out, log

    # (a) alpha = 0 at a middle layer, every step: bit-exact; the hook fired once per step and is gone afterwards
    zero = steer_actions(model, obs, sae, SteerSpec(mid, 0, 0.0), num_steps=num_steps, adapter=adapter, record=True)
    base = zero.actions
    res["add_alpha0_bit_exact"] = bool(torch.equal(zero.steered, base))
    res["add_alpha0_fired_every_step"] = zero.log.step == list(range(num_steps))
    res["add_alpha0_zero_change"] = zero.log.delta_norm == [0.0] * num_steps
    res["hook_removed"] = not any(m._forward_hooks for m in model.modules())  # noqa: SLF001

    # (b) clamp the feature firing most at the last step to its own code: bit-exact; clamp to 0 ablates
    x = zero.log.resid[-1]
    codes = sae.encode(x.reshape(-1, width)).reshape(*x.shape[:2], -1)
    f = int(codes.sum((0, 1)).argmax())
    own = codes[..., f]
    res["clamp_feature"], res["clamp_feature_fires"] = f, bool((own > 0).any())
    last_step = (num_steps - 1,)
    same, log = steered(SteerSpec(mid, f, own, mode="clamp", steps=last_step))
    res["clamp_own_code_matches_hook"] = bool(torch.equal(log.code[0], own))
    res["clamp_own_bit_exact"] = bool(torch.equal(same, base)) and log.delta_norm == [0.0]
    if full:
        ablated, log = steered(SteerSpec(mid, f, 0.0, mode="clamp", steps=last_step))
        want = float((own[..., None] * sae.W_dec[f]).norm())
        res["clamp_zero_changes_actions"] = not torch.equal(ablated, base)
        res["clamp_zero_writes_minus_code"] = abs(log.delta_norm[0] - want) <= 1e-5 * want

    # (c) small adds follow the velocity lens, first order in alpha; another feature's prediction does not fit
    w, other = sae.W_dec[f], sae.W_dec[(f + 1) % sae.d_sae]
    for name, layer, steps, min_cos in (("last", last, last_step, MIN_COS_LAST), ("mid", mid, None, MIN_COS_MID)):
        deltas = {}
        for a in (alpha, alpha / 2):
            out, log = steered(SteerSpec(layer, f, a, steps=steps), record=True)
            deltas[a] = delta = out - base
            if a == alpha:
                pred = _lens_prediction(model, layout, log, w, a, num_steps)[..., :delta.shape[-1]]
                wrong = _lens_prediction(model, layout, log, other, a, num_steps)[..., :delta.shape[-1]]
                res[f"lens_cos_{name}"] = round(_cos(delta, pred), 6)
                res[f"lens_cos_other_feature_{name}"] = round(_cos(delta, wrong), 6)
                res[f"delta_norm_{name}"] = float(delta.norm())
        res[f"lens_agrees_{name}"] = res[f"lens_cos_{name}"] > min_cos and res[f"delta_norm_{name}"] > 0
        res[f"lens_discriminates_{name}"] = res[f"lens_cos_other_feature_{name}"] < min_cos
        ratio = float(deltas[alpha].norm() / deltas[alpha / 2].norm())
        res[f"ratio_alpha_half_{name}"] = round(ratio, 5)
        res[f"cos_alpha_half_{name}"] = round(_cos(deltas[alpha], deltas[alpha / 2]), 6)
        res[f"linear_{name}"] = abs(ratio - 2) < 0.02 and res[f"cos_alpha_half_{name}"] > 0.9999

    if full:  # instruction tokens (PaliGemma width): alpha = 0 bit-exact, alpha > 0 reaches the actions, one call
        vlm_width = int(model.get_submodule(adapter.layer_paths["vlm"].format(i=vlm_layer)).self_attn.q_proj
                        .in_features)
        vlm = TopKSAE(vlm_width, 8, 2, seed=1).requires_grad_(False)
        out, log = steered(SteerSpec(vlm_layer, 0, 0.0, role="instruction"), dirs=vlm)
        res["instruction_alpha0_bit_exact"] = bool(torch.equal(out, base)) and log.step == [-1]
        out, log = steered(SteerSpec(vlm_layer, 0, 0.5, role="instruction"), dirs=vlm)
        res["instruction_steer_changes_actions"] = not torch.equal(out, base) and log.step == [-1]
    return res


def steer_case(model, pi05: bool, num_steps: int) -> dict:
    """:func:`check_steer` on the check scripts' steering batch (see the module doc), with its run time."""
    import _harness as h

    t0 = time.perf_counter()
    obs = h.make_obs(1, 224, [3, 12] if pi05 else [7], seed=5)
    res = check_steer(model, obs, num_steps, **LAYERS, full=pi05)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res

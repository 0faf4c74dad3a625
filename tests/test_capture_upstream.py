"""Capture against the real upstream implementations, in their own environment (tests/_upstream_env.py).

openpi's ``PI0Pytorch`` (``../shared/third_party/openpi``, pi05=True and False) and lerobot 0.4.4's ``PI05Policy`` /
``PI0Policy``, tiny random models: the store ``actstore`` reads back is compared bit for bit with plain torch hooks
(decision rows per step, adarms cond per (sample, step) and per layer, instruction rows at the prompt's prefix
positions from the model's own pad mask, ``full`` rows), for 1 / 2 / 3 cameras, 224 / 256 / 97 px images, prompts of
different lengths in one batch, the first / a middle / the last layer; a captured run's actions equal an uncaptured
run's. Steering (``capture.steer_actions``) on both models of each: alpha = 0 and a clamp to a feature's own code
leave the actions bit-exact, small steers move them as the velocity lens predicts, linearly in alpha. The
environment is built on first use (about 2 minutes) and cached; if it cannot be built these tests fail
(``ACTSTORE_SKIP_UPSTREAM=1`` skips them on purpose).
"""

from __future__ import annotations

import json
import os

import pytest
from _upstream_env import SKIP_ENV, run_check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800),
              pytest.mark.skipif(os.environ.get(SKIP_ENV, "") not in ("", "0"), reason=f"{SKIP_ENV} is set")]


def _failures(result: dict) -> list[str]:
    bad = []
    for case in result["cases"]:
        for k, v in case.items():
            if isinstance(v, bool) and k not in ("has_cond", "pi05") and not v:
                bad.append(f"{k} in {json.dumps({n: case[n] for n in ('cameras', 'image_size', 'pi05') if n in case})}")
    for section in ("cli", "dtype"):
        bad += [f"{section}.{k}" for k, v in result.get(section, {}).items() if v is False]
    for model, steer in result.get("steer", {}).items():
        bad += [f"steer.{model}.{k} ({json.dumps(steer)})" for k, v in steer.items() if v is False]
    return bad


def _check_steer(result: dict, models: tuple[str, str]) -> None:
    """Steering on both models: alpha = 0 and a clamp to the feature's own code bit-exact, small steers along the
    velocity lens (cosines above tests/test_capture_steer.py's thresholds), linear in alpha."""
    steer = result["steer"]
    assert set(steer) == set(models)
    for name, s in steer.items():
        for k in ("add_alpha0_bit_exact", "clamp_own_bit_exact", "lens_agrees_last", "lens_agrees_mid",
                  "lens_discriminates_mid", "linear_last", "linear_mid"):
            assert s[k] is True, (name, k, s)
        assert s["lens_cos_last"] > 0.9999 and s["lens_cos_mid"] > 0.95, (name, s)
        assert abs(s["ratio_alpha_half_mid"] - 2) < 0.02, (name, s)
    pi05 = steer[models[0]]
    assert pi05["layout"] in ("openpi", "lerobot") and pi05["clamp_zero_changes_actions"]
    assert pi05["instruction_alpha0_bit_exact"] and pi05["instruction_steer_changes_actions"]
    assert steer[models[1]]["layout"].endswith("-pi0")


def test_openpi_pi0_and_pi05_bit_exact_and_cli_checkpoint():
    result = run_check("check_openpi.py", "--cli")
    assert not _failures(result), _failures(result)
    assert len(result["cases"]) == 6
    assert {c["cameras"] for c in result["cases"]} == {1, 2, 3}
    assert all(c["has_cond"] == c["pi05"] for c in result["cases"])
    assert result["ok"]
    assert result["cli"]["cli_pi05"] and result["cli"]["cli_horizon"] == 10
    _check_steer(result, ("pi05", "pi0"))


def test_lerobot_pi05_and_pi0_policies_bit_exact():
    result = run_check("check_lerobot.py")
    assert not _failures(result), _failures(result)
    assert {c["policy"] for c in result["cases"]} == {"pi05", "pi0"}
    assert all(c["has_cond"] == (c["policy"] == "pi05") for c in result["cases"])
    assert result["ok"]
    _check_steer(result, ("pi05", "pi0"))

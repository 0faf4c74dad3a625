"""Capture against the real upstream implementations, in their own environment (tests/_upstream_env.py).

openpi's ``PI0Pytorch`` (``../shared/third_party/openpi``, pi05=True and False) and lerobot 0.4.4's ``PI05Policy`` /
``PI0Policy``, tiny random models: the store ``actstore`` reads back is compared bit for bit with plain torch hooks
(decision rows per step, adarms cond per (sample, step) and per layer, instruction rows at the prompt's prefix
positions from the model's own pad mask, ``full`` rows), for 1 / 2 / 3 cameras, 224 / 256 / 97 px images, prompts of
different lengths in one batch, the first / a middle / the last layer; a captured run's actions equal an uncaptured
run's. The environment is built on first use (about 2 minutes) and cached; if it cannot be built these tests fail
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
    return bad


def test_openpi_pi0_and_pi05_bit_exact_and_cli_checkpoint():
    result = run_check("check_openpi.py", "--cli")
    assert not _failures(result), _failures(result)
    assert len(result["cases"]) == 6
    assert {c["cameras"] for c in result["cases"]} == {1, 2, 3}
    assert all(c["has_cond"] == c["pi05"] for c in result["cases"])
    assert result["ok"]
    assert result["cli"]["cli_pi05"] and result["cli"]["cli_horizon"] == 10


def test_lerobot_pi05_and_pi0_policies_bit_exact():
    result = run_check("check_lerobot.py")
    assert not _failures(result), _failures(result)
    assert {c["policy"] for c in result["cases"]} == {"pi05", "pi0"}
    assert all(c["has_cond"] == (c["policy"] == "pi05") for c in result["cases"])
    assert result["ok"]

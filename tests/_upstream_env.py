"""The second Python environment in which the upstream pi0 / pi0.5 implementations run (openpi, lerobot 0.4.4).

openpi's PyTorch model needs ``transformers==4.53.2`` patched with openpi's ``transformers_replace`` files, which
clashes with the transformers >= 5.5 the project's own environment has, so the upstream checks run in a venv of
their own, built here from the pinned lock ``tests/envs/pi0-upstream.txt`` and cached:

- where: ``$ACTSTORE_UPSTREAM_ENV`` if set, else ``$XDG_CACHE_HOME/actstore-tests/pi0-upstream-<key>`` (default
  ``~/.cache``), where ``<key>`` hashes the lock file, the Python version and openpi's replacement files, so any
  change builds a new one;
- how: ``python -m venv``, then ``pip install --no-deps -r <lock>`` (every package pinned, nothing resolved, so
  pip can never pull another torch), then openpi's own install step: its ``transformers_replace/models/*``
  copied over the venv's ``transformers/models/``; a smoke import; a ``READY`` marker written last;
- concurrency: a file lock next to the venv, so parallel pytest processes build it once.

The project itself and openpi's sources are not installed: the check scripts get them on ``PYTHONPATH`` (the repo
root and ``<repo>/../shared/third_party/openpi/src``), so the fixture stays beside the project.

Without a registry the build fails, and so do the tests (set ``ACTSTORE_SKIP_UPSTREAM=1`` to skip them on purpose).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock

__all__ = ["REPO", "LOCK_FILE", "OPENPI_SRC", "SKIP_ENV", "UpstreamEnvError", "upstream_python", "run_check"]

REPO = Path(__file__).resolve().parents[1]
LOCK_FILE = REPO / "tests" / "envs" / "pi0-upstream.txt"
SHARED = REPO.parent / "shared"
OPENPI_SRC = SHARED / "third_party" / "openpi" / "src"
REPLACE = OPENPI_SRC / "openpi" / "models_pytorch" / "transformers_replace" / "models"
SKIP_ENV = "ACTSTORE_SKIP_UPSTREAM"
"""Set to 1 to skip the upstream tests on purpose (they fail, not skip, when the environment cannot be built)."""


class UpstreamEnvError(RuntimeError):
    """The upstream environment could not be built or a check script failed."""


def _key() -> str:
    h = hashlib.sha256(LOCK_FILE.read_bytes())
    h.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())
    for f in sorted(REPLACE.rglob("*.py")):
        h.update(f.relative_to(REPLACE).as_posix().encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _env_dir() -> Path:
    if os.environ.get("ACTSTORE_UPSTREAM_ENV"):
        return Path(os.environ["ACTSTORE_UPSTREAM_ENV"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "actstore-tests" / f"pi0-upstream-{_key()}"


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UpstreamEnvError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def _check_fixture() -> None:
    if not REPLACE.is_dir():
        raise UpstreamEnvError(
            f"openpi fixture not found at {OPENPI_SRC}: the upstream tests need ../shared/third_party/openpi beside "
            f"the repo ({REPO}); set {SKIP_ENV}=1 to skip them on purpose")


def _build(env: Path) -> None:
    t0 = time.perf_counter()
    if env.exists():
        shutil.rmtree(env)
    _run([sys.executable, "-m", "venv", str(env)], "creating the upstream venv")
    py = env / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", "-r", str(LOCK_FILE)],
         "installing tests/envs/pi0-upstream.txt into the upstream venv (needs the package registry)")
    site = subprocess.run([str(py), "-c", "import transformers, os; print(os.path.dirname(transformers.__file__))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    shutil.copytree(REPLACE, Path(site) / "models", dirs_exist_ok=True)  # openpi's own install step
    _run([str(py), "-c", "from transformers.models.siglip import check; "
          "assert check.check_whether_transformers_replace_is_installed_correctly()"],
         "checking openpi's transformers_replace in the upstream venv")
    (env / "READY").write_text(json.dumps({"key": _key(), "build_seconds": round(time.perf_counter() - t0, 1)}))


def upstream_python() -> Path:
    """The upstream venv's python, built (once, under a file lock) if it is not there yet."""
    _check_fixture()
    env = _env_dir()
    env.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(env) + ".lock", timeout=3600):
        if not (env / "READY").exists():
            _build(env)
    return env / "bin" / "python"


def run_check(script: str, *args: str, timeout: float = 900) -> dict:
    """Run ``tests/upstream/<script>`` in the upstream venv; returns the JSON object it prints last."""
    py = upstream_python()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(OPENPI_SRC)]), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([str(py), str(REPO / "tests" / "upstream" / script), *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=str(REPO))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise UpstreamEnvError(f"{script} {' '.join(args)} failed (exit {proc.returncode}):\n"
                               f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return json.loads(lines[-1])

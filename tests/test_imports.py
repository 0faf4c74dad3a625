"""Package boundaries: no cycle between actstore and capture, no reach-ins to actstore's private modules.

- ``import actstore`` loads neither capture nor torch (checked in a fresh interpreter);
- every public name of actstore resolves with capture not importable (only the ``lens`` / ``dashboard --lens``
  subcommands need it, lazily);
- capture's sources name no private actstore module (``actstore._x``) in imports, attribute chains or text, and
  actstore's sources import capture only in the CLI (``actstore/__main__.py``).

The source checks read the files with ``ast`` / text search, the way ``grep -rn "actstore\\._" capture/`` would.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=REPO)


def test_import_actstore_loads_neither_capture_nor_torch() -> None:
    proc = _run("import sys, actstore\n"
                "print(sorted(m for m in ('capture', 'torch') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_actstore_public_api_without_capture() -> None:
    """With ``import capture`` failing, every name in ``actstore.__all__`` (and the dashboard) still resolves."""
    proc = _run("import sys\nsys.modules['capture'] = None\n"
                "import actstore, actstore.tools.dashboard, actstore.__main__\n"
                "for name in actstore.__all__:\n    getattr(actstore, name)\n"
                "print('capture' in sys.modules and sys.modules['capture'] is not None)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the file, ``from a import b`` as ``a.b``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


_FOLDERS = ("format", "storage", "read", "write", "train", "tools")
"""actstore's folders per concern: everything in them is private (the public names are in ``actstore``)."""


def test_capture_uses_only_actstores_public_api() -> None:
    private = re.compile(r"\bactstore\.(_|(format|storage|read|write|train|tools)\b)")
    found = []
    for path in sorted((REPO / "capture").rglob("*.py")):
        rel = path.relative_to(REPO)
        found += [f"{rel}:{line}: import {mod}" for line, mod in _imports(path)
                  if mod.startswith("actstore.") and mod != "actstore.__version__"
                  and (mod.split(".")[1].startswith("_") or mod.split(".")[1] in _FOLDERS)]
        text = path.read_text(encoding="utf-8")
        found += [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in private.finditer(text)]
    assert found == [], "capture reaches into private actstore modules:\n" + "\n".join(found)


def test_actstore_imports_capture_only_in_the_cli() -> None:
    found = [f"{path.relative_to(REPO)}:{line}: import {mod}"
             for path in sorted((REPO / "actstore").rglob("*.py")) if path.name != "__main__.py"
             for line, mod in _imports(path) if mod == "capture" or mod.startswith("capture.")]
    assert found == [], "actstore imports capture outside its CLI:\n" + "\n".join(found)

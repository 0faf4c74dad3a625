"""``python -m capture``: one ``tyro.cli`` line over ``RunConfig``, run by ``capture._run.run``.

Errors print one line, ``capture: error: <what and the fix>``, and exit 2 for bad arguments (an unknown flag, a
value out of range, a resume that does not match the store) or 1 for failures while capturing; Ctrl-C says how many
batches were committed and prints the command that continues the run. ``CAPTURE_TRACEBACK=1`` shows tracebacks.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sys
from collections.abc import Iterator

from ._cli_config import RunConfig
from ._errors import ActStoreError
from ._run import CaptureInterrupted, capture_run, resolve_part, run, store_path

__all__ = ["PROG", "UsageError", "capture_run", "main", "parse", "resolve_part", "store_path"]

PROG = "python -m capture"
"""The program name shown in usage lines and in the resume hint."""


class UsageError(ActStoreError, ValueError):
    """A command line tyro could not parse (an unknown flag, a value of the wrong type)."""


def parse(argv: list[str]) -> RunConfig:
    """The ``RunConfig`` of a command line; tyro's own messages are folded into one ``UsageError`` line."""
    import tyro

    err = io.StringIO()
    try:
        wide = _wide_terminal() if not {"-h", "--help"} & set(argv) else contextlib.nullcontext()
        with contextlib.redirect_stderr(err), wide:  # wide: tyro's error box wraps no line
            return tyro.cli(RunConfig, args=argv, prog=PROG, config=(tyro.conf.OmitArgPrefixes,))
    except SystemExit as e:
        if e.code in (0, None):
            raise
        raise UsageError(_one_line(err.getvalue())) from None


@contextlib.contextmanager
def _wide_terminal() -> Iterator[None]:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100000"
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _one_line(text: str) -> str:
    """tyro's boxed error message as one line: its title, the argument's help text and box drawing dropped."""
    lines = [re.sub(r"[\u2500-\u257f]", "", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if "Argument helptext:" in lines:
        lines = lines[: lines.index("Argument helptext:")]
    lines = [re.sub(r"^Error parsing [\w.]+: (?=--)", "", ln) for ln in lines[1:] if not ln.startswith("For full")]
    return f"{'; '.join(dict.fromkeys(lines)) or 'invalid arguments'} (see {PROG} --help)"


def resume_command(argv: list[str], path: str) -> str:
    """``argv`` rewritten to continue the store at ``path``: ``--output-dir path --resume``, no ``--overwrite``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--output-dir":
            skip = True
            continue
        if arg.startswith("--output-dir=") or arg in ("--overwrite", "--no-overwrite", "--resume", "--no-resume"):
            continue
        out.append(arg)
    return f"{PROG} {shlex.join([*out, '--output-dir', path, '--resume'])}"


def _exit_code(exc: BaseException) -> int:
    """2 for a bad argument (the store's ValueError / KeyError family), 1 for a failure."""
    return 2 if isinstance(exc, ActStoreError) and isinstance(exc, ValueError | KeyError) else 1


def _say(message: str) -> None:
    print(f"capture: {message}".replace("\n", " "), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m capture``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--version" in argv:
        from actstore import __version__

        print(f"capture (actstore) {__version__}")
        return 0
    debug = os.environ.get("CAPTURE_TRACEBACK", "") not in ("", "0")
    try:
        run(parse(argv))
        return 0
    except CaptureInterrupted as e:
        _say(f"interrupted: {e.committed} of {e.total} batches committed to {e.path} (the batch in progress was "
             f"rolled back); continue with: {resume_command(argv, e.path)}")
        return 130
    except KeyboardInterrupt:
        _say("interrupted before capturing started; no batch was committed")
        return 130
    except ActStoreError as e:
        if debug:
            raise
        _say(f"error: {e}")
        return _exit_code(e)
    except Exception as e:  # a user's factory, a model library, a bug: still one line unless asked for more
        if debug:
            raise
        _say(f"error: {type(e).__name__}: {e} (set CAPTURE_TRACEBACK=1 for the traceback)")
        return 1

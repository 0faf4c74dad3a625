"""``actstore`` / ``python -m actstore``: look at a store from the shell."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Annotated

import tyro

from ._errors import ActStoreError
from ._info import render_summary, summarize
from ._reader import ActStore


@dataclass(frozen=True)
class Info:
    """Summarise a store: layers, roles, steps, rows, d, dtype, codec, size and compression ratio."""

    path: Annotated[str, tyro.conf.Positional]
    """Store to describe (a .zarr directory or a .h5 file)."""
    json: bool = False
    """Print machine-readable JSON instead of tables."""


def info(cmd: Info) -> int:
    with ActStore.open(cmd.path) as store:
        summary = summarize(store)
    if cmd.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        from rich.console import Console

        Console().print(render_summary(summary))
    return 0


COMMANDS = {Info: info}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``actstore`` command."""
    cmd = tyro.extras.subcommand_cli_from_dict(
        {"info": Info}, args=argv, description="Inspect actstore activation stores."
    )
    try:
        return COMMANDS[type(cmd)](cmd)
    except ActStoreError as exc:
        print(f"actstore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

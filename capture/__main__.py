"""``python -m capture``: see ``capture._cli`` (the command line) and ``capture._run`` (the run itself)."""

import sys

from capture._cli import main

if __name__ == "__main__":
    sys.exit(main())

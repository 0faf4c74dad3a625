"""``python -m capture``: see ``capture._cli.capture_run``."""

from capture._cli import main

if __name__ == "__main__":
    main()

"""``python -m varmem``: the ``varmem`` command."""
import sys

from varmem.cli import main

if __name__ == "__main__":
    sys.exit(main())

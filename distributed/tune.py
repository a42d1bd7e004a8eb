"""``python -m varmem.distributed.tune``: ``varmem tune`` as a module (the search is distributed/search/).

    python -m varmem.distributed.tune --config configs/smoke_tiny.yaml --space configs/space_smoke.yaml --out runs/tune_smoke
"""
from __future__ import annotations

import sys

from varmem.distributed.search.cli import main

if __name__ == "__main__":
    sys.exit(main())

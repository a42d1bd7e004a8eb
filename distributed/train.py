"""``python -m varmem.distributed.train``: ``varmem train`` as a module, the form ``ray job submit`` runs.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m varmem.distributed.train --config configs/smoke_tiny.yaml --workers 2 \\
        --set data.dir=$PWD/data/smoke_tiny --out $PWD/runs/smoke_tiny

The flags are ``varmem train``'s (see ``distributed/cli_train.py``); errors a user can fix print
one ``varmem: error: ...`` line and exit with status 2, as the ``varmem`` command does. Inside a
job the working directory is Ray's temporary copy of the submitted one: give absolute paths.
"""
from __future__ import annotations

import sys

from varmem.distributed.cli import module_main
from varmem.distributed.cli_train import TRAIN_DESCRIPTION, _train, add_train_arguments


def main(argv: list[str] | None = None) -> int:
    return module_main("python -m varmem.distributed.train", TRAIN_DESCRIPTION, add_train_arguments, _train, argv)


if __name__ == "__main__":
    sys.exit(main())

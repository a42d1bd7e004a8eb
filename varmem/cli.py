"""The ``varmem`` command: one parser, subcommands contributed by each package.

    varmem data ...                        varmem.episodes.cli
    varmem train | eval | compare | tune | plot
                                           varmem.distributed (cli_train, cli_eval, search.cli, cli_plot)
    varmem memory ... | scale              varmem.distributed (cli_memory, cli_scale)
    varmem bench ...                       varmem.benchmarks.cli (when installed)

This module is the top layer: it imports every package, none of them imports it. How a subcommand
runs (one ``varmem: error:`` line and status 2 for a user error) is varmem.distributed.cli's
:func:`run_command`. Nothing here imports torch until a command runs: ``varmem data ...`` stays light.
"""
from __future__ import annotations

import argparse
import sys

from varmem.distributed.cli import run_command
from varmem.distributed.cli_eval import add_eval_commands
from varmem.distributed.cli_memory import add_memory_command
from varmem.distributed.cli_plot import add_plot_command
from varmem.distributed.cli_scale import add_scale_command
from varmem.distributed.cli_train import add_train_commands
from varmem.distributed.search.cli import add_tune_command
from varmem.episodes.cli import add_data_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="varmem",
        description="Memory-augmented generative few-shot models: data, kernels, training.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_command(sub)
    add_train_commands(sub)
    add_eval_commands(sub)
    add_tune_command(sub)
    add_plot_command(sub)
    add_memory_command(sub)
    add_scale_command(sub)
    try:
        from varmem.benchmarks.cli import add_bench_command
    except ImportError:  # benchmarks are not installed in every layout
        return parser
    add_bench_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())

"""The ``varmem`` command line: one parser, subcommands contributed by each package.

Errors a user can fix (bad paths, bad specs, bad configs, an unavailable kernel backend) are
printed as one ``varmem: error: ...`` line with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="varmem",
        description="Memory-augmented generative few-shot models: data, kernels, training.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from varmem.episodes.cli import add_data_command

    add_data_command(sub)
    from varmem.distributed.cli_train import add_train_commands

    add_train_commands(sub)
    from varmem.distributed.cli_eval import add_eval_commands

    add_eval_commands(sub)
    from varmem.distributed.tune import add_tune_command

    add_tune_command(sub)
    try:
        from varmem.benchmarks.cli import add_bench_command
    except ImportError:  # benchmarks are not installed in every layout
        add_bench_command = None
    if add_bench_command is not None:
        add_bench_command(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is the whole story for the user."""
    from varmem.episodes.errors import DataError

    from varmem.distributed.config import ConfigError, TrainingDiverged

    errors: list[type[BaseException]] = [DataError, ConfigError, TrainingDiverged, FileNotFoundError]
    try:
        from varmem.kernels.dispatch import BackendUnavailable

        errors.append(BackendUnavailable)
    except ImportError:
        pass
    return tuple(errors)


PLUGIN_HELP = ("import a model-family plugin first: a module name or a .py file that registers a family with "
               "@varmem.models.registry.register (repeatable; also VARMEM_PLUGINS=a,b). A config file can only "
               "name a registered family, never import code")


def add_plugin_argument(parser: argparse.ArgumentParser) -> None:
    """``--plugin MODULE_OR_FILE`` (repeatable) on a command that builds models."""
    parser.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE_OR_FILE", help=PLUGIN_HELP)


def run_command(func, args: argparse.Namespace) -> int:
    """Run a subcommand: a user error is one ``varmem: error:`` line and status 2, Ctrl-C is 130."""
    try:
        if getattr(args, "plugins", None):
            from varmem.models.registry import load_plugins

            load_plugins(args.plugins)
        return int(func(args) or 0)
    except user_errors() as exc:
        print(f"varmem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("varmem: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `varmem ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())

"""What every ``varmem`` subcommand shares: how it is declared (:func:`add_command`, and
:func:`module_main` for its ``python -m`` form), how it runs (:func:`run_command`), ``--plugin``.

Errors a user can fix (bad paths, bad specs, bad configs, an unavailable kernel backend) are
printed as one ``varmem: error: ...`` line with exit status 2, never as a traceback; Ctrl-C is 130.
The subcommands of this layer (``varmem train``, ``eval``, ``compare``, ``tune``) are in
distributed/cli_train.py, distributed/cli_eval.py and distributed/search/cli.py; the ``varmem``
command itself is assembled in varmem/cli.py, the layer above every package.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is the whole story for the user."""
    from varmem.distributed.config import ConfigError, RunDirError, TrainingDiverged
    from varmem.episodes.errors import DataError

    errors: list[type[BaseException]] = [DataError, ConfigError, TrainingDiverged, RunDirError, FileNotFoundError]
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


def add_command(sub: argparse._SubParsersAction, name: str, *, help: str, description: str,
                arguments: Callable[[argparse.ArgumentParser], None], run: Callable[[argparse.Namespace], int]) -> None:
    """Subcommand ``varmem NAME``: its flags from ``arguments(parser)``, run by ``run(args)``."""
    p = sub.add_parser(name, help=help, description=description)
    arguments(p)
    p.set_defaults(func=run)


def module_main(prog: str, description: str, arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    """A subcommand as ``python -m MODULE`` (the form ``ray job submit`` runs): the same flags, the same
    one-line errors and exit statuses as ``varmem NAME``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    arguments(parser)
    return run_command(run, parser.parse_args(argv))


def one_line(message: str) -> str:
    """``message`` on one line: a line break it holds (from a value a user gave) written as ``\\n``."""
    return "\\n".join(message.splitlines())


def run_command(func, args: argparse.Namespace) -> int:
    """Run a subcommand: a user error is one ``varmem: error:`` line and status 2, Ctrl-C is 130."""
    try:
        if getattr(args, "plugins", None):
            from varmem.models.registry import load_plugins

            load_plugins(args.plugins)
        return int(func(args) or 0)
    except user_errors() as exc:
        print(f"varmem: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("varmem: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `varmem ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

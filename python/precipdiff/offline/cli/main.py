"""Entry point of the ``precipdiff`` command.

Each subcommand lives in its own module ``precipdiff.offline.cli.<name>`` that defines
``add_parser(subparsers)``; the module registers its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit code.

Conventions of every subcommand: errors a user can cause print one line
(``precipdiff: error: ...``, exit status 2); messages go through :mod:`logging` to stderr
(``-v`` more, ``-q`` only warnings and errors, before or after the subcommand); results
go to stdout; a closed stdout (``precipdiff inspect B | head -1``) ends quietly.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from precipdiff import __version__
from precipdiff.errors import PrecipDiffError

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "inspect",
    "generate",
    "export",
    "prepare",
    "train",
    "qdm",
    "evaluate",
    "info",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level argument parser with every subcommand registered.

    Returns
    -------
    argparse.ArgumentParser
        The parser for ``precipdiff``.
    """
    parser = argparse.ArgumentParser(
        prog="precipdiff",
        description=(
            "Generate high-resolution precipitation ensembles from large-scale "
            "atmospheric state (UNet regression + noise-conditioned diffusion)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"precipdiff {__version__}")
    _add_verbosity(parser, default=0)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"precipdiff.offline.cli.{name}")
        module.add_parser(subparsers)
    for sub in _subparsers(parser):
        _add_verbosity(sub, default=argparse.SUPPRESS)  # also accepted after the subcommand
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (nested) subcommand parser, e.g. ``generate`` and ``qdm fit``."""
    found: dict[int, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if id(sub) not in found:
                    found[id(sub)] = sub
                    for nested in _subparsers(sub):
                        found.setdefault(id(nested), nested)
    return list(found.values())


def _add_verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="more messages (-v: details, e.g. every unit conversion; -vv: debug)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=default,
        help="only warnings and errors (-qq: only errors)",
    )


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"precipdiff: error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"precipdiff: warning: {msg}"
        return f"precipdiff: {msg}"


def configure_logging(verbose: int = 0, quiet: int = 0) -> int:
    """Send the package's log records to stderr at the level ``-v``/``-q`` choose.

    Default INFO (what was converted, regridded, written); ``-v`` and more: DEBUG;
    ``-q``: WARNING; ``-qq``: ERROR. Only the ``precipdiff`` logger is configured.

    Parameters
    ----------
    verbose, quiet : int
        How often ``-v`` and ``-q`` were given.

    Returns
    -------
    int
        The level set.
    """
    n = verbose - quiet
    level = logging.DEBUG if n > 0 else {0: logging.INFO, -1: logging.WARNING}.get(n, logging.ERROR)
    logger = logging.getLogger("precipdiff")
    for h in list(logger.handlers):
        if getattr(h, "_precipdiff_cli", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    handler._precipdiff_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return level


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``precipdiff`` command.

    Parameters
    ----------
    argv
        Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns
    -------
    int
        Process exit code (0 on success).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(int(getattr(args, "verbose", 0)), int(getattr(args, "quiet", 0)))
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        if getattr(args, "bundle", None) is not None:
            from precipdiff.bundle import find_bundle

            # a shipped bundle's name (iberia-demo) works wherever a bundle path does
            args.bundle = find_bundle(args.bundle)
        rc = int(args.func(args) or 0)
        sys.stdout.flush()
        return rc
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _closed_stdout()
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return _closed_stdout()
        # Files that cannot be read or written (permissions, a full disk, a directory
        # given as a file): one line naming the file, not a traceback.
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"precipdiff: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2
    except PrecipDiffError as exc:
        # User-caused problems get one line naming the problem, not a traceback.
        print(f"precipdiff: error: {exc}", file=sys.stderr)
        return 2


def _closed_stdout() -> int:
    """Stop quietly when the reader of stdout went away (``| head``), as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit-time flush must not fail again
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the pipe


if __name__ == "__main__":
    raise SystemExit(main())

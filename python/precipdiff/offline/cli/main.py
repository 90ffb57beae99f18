"""Entry point of the ``precipdiff`` command.

Each subcommand lives in its own module ``precipdiff.offline.cli.<name>`` that defines
``add_parser(subparsers)``; the module registers its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"precipdiff.offline.cli.{name}")
        module.add_parser(subparsers)
    return parser


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
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except PrecipDiffError as exc:
        # User-caused problems get one line naming the problem, not a traceback.
        print(f"precipdiff: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``stream`` command, above every layer: it builds its subcommands from the service
(``serve``, ``generate``), the clients (``caption``, ``restyle``, ``timeline``) and the evaluations
(``eval``, ``bench``)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from framestream.cli.checks import UsageError
from framestream.cli.generate import add_generate_parser
from framestream.cli.serve import add_serve_parser
from framestream.cli.tools import (
    add_bench_parser,
    add_caption_parser,
    add_eval_parser,
    add_restyle_parser,
    add_timeline_parser,
)
from framestream.stream.version import __version__

__all__ = ["build_parser", "main"]


def _version(_: argparse.Namespace) -> int:
    print(f"stream {__version__}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Says what is wrong with the command line in one line, ``stream COMMAND: reason``, and
    exits with 2; ``--help`` shows the usage. Subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stream",
        description="Real-time streaming video generation and understanding service.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = commands.add_parser("version", help="print the version and exit")
    version.set_defaults(run=_version)
    add_generate_parser(commands)
    add_serve_parser(commands)
    add_caption_parser(commands)
    add_restyle_parser(commands)
    add_timeline_parser(commands)
    add_eval_parser(commands)
    add_bench_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except UsageError as exc:  # found before anything loaded
        print(f"stream {args.command}: {exc}", file=sys.stderr)
        return 2

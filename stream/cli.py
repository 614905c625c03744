"""The ``stream`` command. Subcommands arrive with the features they run."""

from __future__ import annotations

import argparse
import sys

import stream

__all__ = ["main"]


def _version(_: argparse.Namespace) -> int:
    print(f"stream {stream.__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream",
        description="Real-time streaming video generation and understanding service.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = commands.add_parser("version", help="print the version and exit")
    version.set_defaults(run=_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""Copy what the published loops import out of checkouts, for a machine that cannot fetch them.

::

    python -m framestream.evals.devtools.export_checkouts ~/src/LongLive ~/src/RollingForcing .ref

writes ``.ref/LongLive`` and ``.ref/RollingForcing`` (the folder names of the sources): each
checkout's git-tracked Python files, its ``configs/`` and its licence, and a ``COMMIT`` file
holding the commit it was exported at, which :func:`evals.fidelity.published.commit_of` reads
where there is no ``.git``. Images, videos and other assets stay behind (well under a
megabyte each). ``.ref/`` is ignored by this repository's git, so nothing published is
committed here; ``run(carry=[".ref"])`` takes it to the device.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from framestream.evals.fidelity.published import COMMIT_FILE

__all__ = ["export_checkout", "main"]


def _kept(name: str) -> bool:
    """Whether a tracked file is one the loops may import or read."""
    return name.endswith(".py") or name.startswith("configs/") or name.startswith("LICENSE")


def export_checkout(source: Path, dest: Path) -> Path:
    """Copy the kept files of the git checkout ``source`` into ``dest / source.name``
    (replacing what was there) and record its commit; returns that folder."""
    source = Path(source).resolve()
    git = ["git", "-C", str(source)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if commit.returncode != 0:
        raise ValueError(f"{source} is not a git checkout: {commit.stderr.strip()}")
    listed = subprocess.run(
        [*git, "ls-files", "-z"], capture_output=True, text=True, check=True
    ).stdout
    target = Path(dest) / source.name
    if target.exists():
        shutil.rmtree(target)
    for name in filter(_kept, listed.split("\0")):
        if (source / name).is_file():  # a tracked file deleted in the work tree is skipped
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)
    target.mkdir(parents=True, exist_ok=True)
    (target / COMMIT_FILE).write_text(commit.stdout.strip() + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framestream.evals.devtools.export_checkouts", description=__doc__
    )
    parser.add_argument("sources", nargs="+", type=Path, help="git checkouts")
    parser.add_argument("dest", type=Path, help="the folder to write them in, e.g. .ref")
    args = parser.parse_args(argv)
    for source in args.sources:
        try:
            target = export_checkout(source, args.dest)
        except ValueError as error:
            print(error, file=sys.stderr)
            return 2
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        print(f"{source} -> {target} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

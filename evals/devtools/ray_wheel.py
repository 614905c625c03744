"""A Ray wheel small enough to carry to a machine with no package index, with the dependencies
such a machine's image may lack::

    python -m framestream.evals.devtools.ray_wheel --python-version 3.12 --out .whl-ray

Ray's manylinux wheel is larger than the 64 MiB a device call carries with the working tree.
Python actors need neither the Java jar (ray/jars), nor the dashboard's web page, nor the
libraries built on Ray (RLlib, Tune, Train, Data, Serve, LLM), nor the symbol tables of the
three native binaries (raylet, gcs_server, _raylet.so). What is left is rewritten as a wheel
of the same name whose RECORD lists the new files and hashes, so pip installs it as it is
(``--no-deps``: the dependencies are wheels beside it).

The members are compressed with LZMA (smaller than deflate): a wheel is a zip, and pip reads it
with Python's ``zipfile``, which reads LZMA members (pip 23.2 and 26.3 installed it on CPython
3.12). ``--compression deflate`` writes the standard method where a tool insists.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["DEPENDENCIES", "DROPPED", "download", "main", "trim"]

# not needed by Python actors and tasks (prefixes of paths in the wheel)
DROPPED = (
    "ray/jars/",  # Java workers
    "ray/dashboard/client/build/",  # the dashboard's web page (it is not started)
    "ray/rllib/",
    "ray/tune/",
    "ray/train/",
    "ray/data/",
    "ray/serve/",
    "ray/llm/",
)
# native binaries shipped with symbol tables; strip --strip-unneeded keeps what they link by
_STRIPPED = ("ray/_raylet.so", "ray/core/src/ray/gcs/gcs_server", "ray/core/src/ray/raylet/raylet")
# Ray's requirements that a torch + transformers image lacks (its others, click, filelock,
# packaging, protobuf, pyyaml and requests, come with such images); msgpack is Ray's wire
# format, so it travels too rather than trusting the image's version
DEPENDENCIES = ("jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "msgpack")
_COMPRESSION = {"lzma": zipfile.ZIP_LZMA, "deflate": zipfile.ZIP_DEFLATED}
_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")


def download(requirements: list[str], python_version: str, into: Path) -> list[Path]:
    """Binary wheels of ``requirements`` for CPython ``python_version`` on x86-64 Linux."""
    into.mkdir(parents=True, exist_ok=True)
    before = set(into.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python_version, "--implementation", "cp", "-d", str(into)]
    for platform in _PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, *requirements], check=True)
    return sorted(set(into.glob("*.whl")) - before)


def trim(wheel: Path, out_dir: Path, compression: int = zipfile.ZIP_LZMA) -> Path:
    """``wheel`` without :data:`DROPPED`, its binaries stripped, as ``out_dir/<same name>``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    strip = shutil.which("strip")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w") as trimmed:
        record = next(n for n in source.namelist() if n.endswith(".dist-info/RECORD"))
        rows = []
        for info in source.infolist():
            name = info.filename
            if name == record or name.startswith(DROPPED):
                continue
            data = source.read(info)
            if name in _STRIPPED and strip is not None:
                data = _stripped(data, strip)
            _write(trimmed, info, data, compression)
            rows.append((name, _hash(data), str(len(data))))
        rows.append((record, "", ""))
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        _write(trimmed, source.getinfo(record), text.getvalue().encode(), compression)
    return target


def _write(archive: zipfile.ZipFile, like: zipfile.ZipInfo, data: bytes, compression: int) -> None:
    info = zipfile.ZipInfo(like.filename, like.date_time)
    info.external_attr = like.external_attr  # the binaries' execute bits
    info.compress_type = compression
    archive.writestr(info, data, compresslevel=9)


def _stripped(data: bytes, strip: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "binary"
        path.write_bytes(data)
        subprocess.run([strip, "--strip-unneeded", str(path)], check=True)
        return path.read_bytes()


def _hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framestream.evals.devtools.ray_wheel", description=__doc__
    )
    parser.add_argument("--version", default="2.60.0", help="Ray's version")
    parser.add_argument("--python-version", default="3.12", help="of the machine it goes to")
    parser.add_argument("--out", type=Path, default=Path(".whl-ray"))
    parser.add_argument("--wheel", type=Path, help="trim this Ray wheel instead of downloading")
    parser.add_argument("--compression", choices=sorted(_COMPRESSION), default="lzma")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        ray = [f"ray=={args.version}"]
        wheel = args.wheel or download(ray, args.python_version, Path(folder))[0]
        original = wheel.stat().st_size
        trimmed = trim(wheel, args.out, _COMPRESSION[args.compression])
    download(list(DEPENDENCIES), args.python_version, args.out)
    for path in sorted(args.out.glob("*.whl")):
        print(f"{path.stat().st_size / 1e6:7.2f} MB  {path.name}")
    total = sum(path.stat().st_size for path in args.out.glob("*.whl"))
    size = trimmed.stat().st_size
    print(f"{total / 1e6:7.2f} MB in {args.out}; Ray {original / 1e6:.1f} -> {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

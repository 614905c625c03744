"""The trimmed Ray wheel (evals/devtools/ray_wheel.py) on a small wheel of Ray's layout: what is
dropped is gone, binaries keep their execute bits, the RECORD matches every file, and pip
installs it as it is."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from framestream.evals.devtools.ray_wheel import trim

DIST = "ray-0.0.1.dist-info"
EXECUTABLE = 0o100755 << 16


def wheel(folder: Path, binary: bytes) -> Path:
    path = folder / "ray-0.0.1-py3-none-any.whl"
    files = {
        "ray/__init__.py": b"VERSION = 1\n",
        "ray/jars/ray_dist.jar": b"java" * 1000,
        "ray/rllib/__init__.py": b"",
        "ray/dashboard/client/build/index.html": b"<html>",
        "ray/dashboard/head.py": b"",
        "ray/core/src/ray/raylet/raylet": binary,
        f"{DIST}/METADATA": b"Metadata-Version: 2.1\nName: ray\nVersion: 0.0.1\n",
        f"{DIST}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            if name.endswith("raylet"):
                info.external_attr = EXECUTABLE
            archive.writestr(info, data)
        archive.writestr(f"{DIST}/RECORD", "".join(f"{name},,\n" for name in files))
    return path


def test_a_trimmed_wheel_keeps_what_actors_need_and_installs(tmp_path) -> None:
    true = shutil.which("true")
    if true is None or shutil.which("strip") is None:
        pytest.skip("needs /bin/true and strip")
    binary = Path(true).read_bytes()
    trimmed = trim(wheel(tmp_path, binary), tmp_path / "out")
    assert trimmed.name == "ray-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(trimmed) as archive:
        names = set(archive.namelist())
        assert "ray/__init__.py" in names and "ray/dashboard/head.py" in names
        assert not any(
            n.startswith(("ray/jars/", "ray/rllib/", "ray/dashboard/client/")) for n in names
        )
        raylet = archive.getinfo("ray/core/src/ray/raylet/raylet")
        assert raylet.external_attr == EXECUTABLE
        assert raylet.compress_type == zipfile.ZIP_LZMA
        assert len(archive.read(raylet)) <= len(binary)  # stripped
        rows = list(csv.reader(io.StringIO(archive.read(f"{DIST}/RECORD").decode())))
        assert {row[0] for row in rows} == names
        for name, digest, size in rows:
            if name != f"{DIST}/RECORD":
                data = archive.read(name)
                expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                assert (digest, int(size)) == (f"sha256={expected.decode()}", len(data))
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    subprocess.run([*pip, "--target", str(target), str(trimmed)], check=True, timeout=120)
    installed = target / "ray/core/src/ray/raylet/raylet"
    assert installed.stat().st_mode & 0o111  # still executable
    subprocess.run([str(installed)], check=True, timeout=30)  # and it runs

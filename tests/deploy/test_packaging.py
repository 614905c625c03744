"""The distribution claims one import name, ``framestream``, and lives beside its neighbours:
the wheel's top-level names, every module imported beside Hugging Face's ``kernels`` from the
repository root (where ``python -m`` and pytest put the root on ``sys.path``), and a
non-editable install serving from outside the repository.

transformers 5.25 made Hugging Face's ``kernels`` a requirement; while this project's
``kernels/`` folder was a top-level package, each shadowed the other (docs/architecture.md,
"One import namespace")."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.deploy.files import REPO
from tests.processes import health_url

# The only top-level import names the wheel may hold.
ALLOWED_TOP_LEVEL = {"framestream"}
FOLDERS = ("stream", "models", "kernels", "clients", "evals", "cli")
# Development tools that run from a checkout only: absent from pyproject's packages, so from
# the wheel (evals/devtools/__init__.py).
CHECKOUT_ONLY = ("evals/devtools",)
# What the installed package reads at run time besides its modules.
DATA = (
    "framestream/stream/static/index.html",
    "framestream/models/toyworld/checkpoints/generator/dit.safetensors",
    "framestream/models/toyworld/checkpoints/generator/text_encoder.safetensors",
    "framestream/models/toyworld/checkpoints/generator/words.json",
    "framestream/models/toyworld/checkpoints/generator/vae/config.json",
    "framestream/models/toyworld/checkpoints/vlm/model.safetensors",
    "framestream/evals/report_template.md",
)


def sources() -> list[Path]:
    """Every Python file of the package's folders (the checkout-only ones included)."""
    return sorted(
        path
        for folder in FOLDERS
        for path in (REPO / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def checkout_only(path: Path) -> bool:
    return path.relative_to(REPO).as_posix().startswith(tuple(f"{f}/" for f in CHECKOUT_ONLY))


def module_names() -> list[str]:
    """The import name of every module of ours (``__main__`` modules would run)."""
    names = []
    for path in sources():
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(("framestream", *parts)))
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds for ``pip install .``, built from a copy so the checkout stays
    clean of ``build/`` and egg-info."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(out), str(source)],
        check=True,
        timeout=300,
    )
    (path,) = out.glob("framestream-*.whl")
    return path


def test_no_root_folder_is_a_package() -> None:
    # with an __init__.py, the root on sys.path would make the folder a top-level package that
    # shadows an installed one of the same name
    for folder in FOLDERS:
        assert not (REPO / folder / "__init__.py").exists(), folder


def test_the_wheel_claims_one_import_name_and_holds_every_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/")[0] for name in names}
    dist_info = {name for name in top_level if name.endswith(".dist-info")}
    assert top_level - dist_info == ALLOWED_TOP_LEVEL
    expected = {
        f"framestream/{path.relative_to(REPO).as_posix()}"
        for path in sources()
        if not checkout_only(path)
    }
    assert not expected - names, sorted(expected - names)  # pyproject's packages list is whole
    assert not set(DATA) - names, sorted(set(DATA) - names)
    for folder in CHECKOUT_ONLY:
        shipped = sorted(name for name in names if name.startswith(f"framestream/{folder}/"))
        assert not shipped, shipped  # development tools stay out of the installed package


def test_every_module_imports_beside_hugging_face_kernels() -> None:
    # One process, started in the repository root as `python -m` would be: Hugging Face's
    # `kernels` and the diffusers and transformers modules that import it, then every module
    # of ours; neither side may get the other's.
    code = """
import importlib, sys
import kernels
assert hasattr(kernels, "get_kernel"), f"not Hugging Face's kernels: {kernels.__file__}"
import diffusers.loaders.peft
import transformers.integrations.hub_kernels
for name in sys.argv[1:]:
    importlib.import_module(name)
assert sys.modules["kernels"] is kernels
print(len(sys.argv) - 1)
"""
    names = module_names()
    out = subprocess.run(
        [sys.executable, "-c", code, *names],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) == len(names) > 100


def test_a_non_editable_install_serves_from_outside_the_repository(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # the dependencies are this environment's (a .pth line is a plain path: its own .pth files,
    # this checkout's editable hook among them, are not read), the package only the wheel's
    site_packages = Path(
        sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"]
    )
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
    )
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import framestream.cli.main as m; print(m.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(site_packages), where

    process = subprocess.Popen(
        [str(venv / "bin" / "stream"), "serve", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = health_url(process)
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and response.read().strip() == b"ok"
        with urllib.request.urlopen(url.removesuffix("healthz"), timeout=10) as response:
            assert b"<html" in response.read().lower()  # the page, from the package's data
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

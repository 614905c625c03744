"""The Dockerfile, checked without Docker: what it copies exists and is all the package needs,
the extra it installs exists, its command is ``stream serve`` with flags and variables the CLI
knows, and its port and health check are the server's."""

from __future__ import annotations

import asyncio
import fnmatch
import urllib.request

import pytest

from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine
from framestream.stream.server import build_server
from tests.deploy.files import (
    REPO,
    exec_form,
    image_environment,
    instructions,
    known_variables,
    stream_serve,
)

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def copied() -> list[str]:
    """Every source of the Dockerfile's COPY instructions."""
    return [source for arguments in instructions("COPY") for source in arguments.split()[:-1]]


def test_it_copies_what_the_package_is_built_from() -> None:
    for source in copied():
        assert (REPO / source).exists(), source
    for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values():
        assert folder in copied(), folder
    assert PYPROJECT["project"]["readme"] in copied()
    assert "constraints.txt" in copied()  # the image installs the tested versions


def test_what_it_installs_exists() -> None:
    (install,) = [run for run in instructions("RUN") if '".[' in run]
    extra = install.split('".[')[1].split("]")[0]
    assert extra in PYPROJECT["project"]["optional-dependencies"]
    torch = [run for run in instructions("RUN") if "$TORCH" in run]
    args = {a.split("=")[0] for a in instructions("ARG")}
    assert torch and {"TORCH", "TORCH_INDEX"} <= args


def test_the_command_is_stream_serve_with_known_settings() -> None:
    env = image_environment()
    assert set(k for k in env if k.startswith("STREAM_")) <= known_variables()
    (cmd,) = instructions("CMD")
    argv = exec_form(cmd)
    assert argv[0] in PYPROJECT["project"]["scripts"]
    args = stream_serve(argv, {**env, "STREAM_TOKEN": "s3cret"})
    assert (args.host, args.port, str(args.record_dir)) == ("0.0.0.0", 8000, "/recordings")
    # beyond loopback the server needs the token the image leaves to its user
    ServerConfig(host=args.host, port=args.port, token=args.token)
    with pytest.raises(ValueError, match="token"):
        ServerConfig(host=args.host, port=args.port)


def test_port_volumes_and_health_check_are_the_servers() -> None:
    env = image_environment()
    (exposed,) = instructions("EXPOSE")
    assert exposed == env["STREAM_PORT"] == "8000"
    (volumes,) = instructions("VOLUME")
    assert env["STREAM_RECORD_DIR"] in exec_form(volumes) and "/checkpoints" in volumes
    (health,) = instructions("HEALTHCHECK")
    assert f"http://127.0.0.1:{exposed}/healthz" in health and "--start-period" in health


def test_the_health_path_answers_on_a_live_server() -> None:
    async def main():
        async with build_server(ServerConfig(port=0), Engine({})) as server:
            url = f"http://127.0.0.1:{server.port}/healthz"
            reply = await asyncio.to_thread(urllib.request.urlopen, url, timeout=10)
            assert reply.status == 200 and reply.read() == b"ok\n"

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_build_context_leaves_out_environments_and_wheels() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (".git", ".venv", ".whl", ".whl-ray", "stream/__pycache__"):
        assert any(fnmatch.fnmatch(path, pattern) for pattern in ignored), path
    for source in copied():
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source

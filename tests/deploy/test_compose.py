"""docker-compose.yml, checked without Compose: one node and the cluster profile, every
variable one that ``stream serve`` reads, every command one that ``stream serve`` or
``ray start`` parses, and the pieces wired to each other (ports, health, volumes, addresses)."""

from __future__ import annotations

import shlex

import pytest

from framestream.stream.config import ServerConfig
from tests.deploy.files import (
    compose,
    exec_form,
    image_environment,
    instructions,
    known_variables,
    stream_serve,
)

GIVEN = {"STREAM_TOKEN": "s3cret", "RAY_AUTH_TOKEN": "a-long-random-string"}
CLUSTER = ("ray-head", "ray-gpu", "front")


@pytest.fixture(scope="module")
def services() -> dict:
    return compose(GIVEN)["services"]


def commands(service: dict) -> list[list[str]]:
    """The service's command as argvs (``sh -c "a && exec b"`` is two)."""
    command = service["command"]
    if command[:2] != ["sh", "-c"]:
        return [command]
    return [shlex.split(part.removeprefix("exec ")) for part in command[2].split(" && ")]


def serve_args(service: dict):
    (argv,) = [argv for argv in commands(service) if argv[:2] == ["stream", "serve"]]
    return stream_serve(argv, {**image_environment(), **service["environment"]})


def test_one_node_by_default_and_the_cluster_as_a_profile(services) -> None:
    assert set(services) == {"stream", *CLUSTER}
    assert "profiles" not in services["stream"]
    for name in CLUSTER:
        assert services[name]["profiles"] == ["cluster"]
    for service in services.values():  # one image for every role, built from this checkout
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    with pytest.raises(KeyError, match="STREAM_TOKEN"):
        compose({})  # the server binds beyond loopback: no token, no start


def test_every_variable_is_one_stream_serve_reads(services) -> None:
    known = known_variables()
    for name in ("stream", "front"):
        variables = {k for k in services[name]["environment"] if k.startswith("STREAM_")}
        assert variables <= known, variables - known
    cluster = serve_args(services["front"])
    assert (cluster.engines, cluster.gpus_per_engine) == (0, 1.0)  # one engine per GPU


def test_the_servers_commands_parse_and_make_valid_configs(services) -> None:
    single = serve_args(services["stream"])
    assert single.cluster is None and single.preset == "toyworld" and single.model_dir is None
    front = serve_args(services["front"])
    assert front.cluster == "auto"  # the Ray node the container joined first
    for args in (single, front):
        ServerConfig(host=args.host, port=args.port, token=args.token)


def test_ray_commands_parse(services) -> None:
    ray_cli = pytest.importorskip("ray.scripts.scripts").cli
    for name in CLUSTER:
        for argv in commands(services[name]):
            if argv[0] == "ray":
                ray_cli.commands[argv[1]].make_context(argv[1], argv[2:])  # raises on a typo
        health = services[name].get("healthcheck", {}).get("test", [])
        if health[1:2] == ["ray"]:
            ray_cli.commands[health[2]].make_context(health[2], health[3:])


def test_the_cluster_is_wired_to_its_head(services) -> None:
    (head,) = commands(services["ray-head"])
    assert "--head" in head
    port = next(a for a in head if a.startswith("--port=")).split("=")[1]
    for name in ("ray-gpu", "front"):
        start = next(argv for argv in commands(services[name]) if argv[:2] == ["ray", "start"])
        assert f"--address=ray-head:{port}" in start
        assert services[name]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    (front_start, _) = commands(services["front"])
    assert {"--num-cpus=0", "--num-gpus=0"} <= set(front_start)  # engines never land there
    for name in CLUSTER:  # Ray's token authentication on every node
        environment = services[name]["environment"]
        assert environment["RAY_AUTH_MODE"] == "token" and environment["RAY_AUTH_TOKEN"]


def test_gpus_ports_health_and_volumes(services) -> None:
    def gpus(name: str) -> list:
        return services[name].get("deploy", {}).get("resources", {}).get("reservations", {})

    assert gpus("stream")["devices"][0]["capabilities"] == ["gpu"]
    assert gpus("ray-gpu")["devices"][0]["count"] == "all"
    assert not gpus("ray-head") and not gpus("front")
    (exposed,) = instructions("EXPOSE")
    for name in ("stream", "front"):  # the two that serve clients, on the image's port
        service = services[name]
        assert [p.split(":")[-1] for p in service["ports"]] == [exposed]
        assert f"http://127.0.0.1:{exposed}/healthz" in " ".join(service["healthcheck"]["test"])
        recordings = image_environment()["STREAM_RECORD_DIR"]
        assert f"recordings:{recordings}" in service["volumes"]
    (volumes,) = instructions("VOLUME")
    for name in ("stream", "ray-gpu"):  # where the models load: the same path on every node
        assert "checkpoints:/checkpoints:ro" in services[name]["volumes"]
        assert "/checkpoints" in exec_form(volumes)
    for name in CLUSTER:
        assert "shm_size" in services[name]  # Ray's object store lives in /dev/shm

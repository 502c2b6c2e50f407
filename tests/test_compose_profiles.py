"""The compose stack's two profiles cannot drift: the T4 one (docker-compose.yml with
docker-compose.override.yml, what `docker compose up` reads) and the CPU one (docker-compose.yml with
docker-compose.cpu.yml, what CI runs for real in tests/test_compose_stack.py) differ only where
documented. And the stack is safe by default: its published ports listen on loopback, Grafana has no
default password.

Both configurations are compose's own merge (`docker-compose config`), so what is compared is what
compose would run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
T4 = ["-f", "docker-compose.yml", "-f", "docker-compose.override.yml"]
CPU = ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]
# What a service may set differently in the two profiles (the README's compose section lists them).
PER_PROFILE_KEYS = {"image", "build", "deploy", "profiles"}
# The T4 profile's vLLM settings for the GPU and its 8-bit weights; on CPU the demo model's own
# settings apply (service/machine.py), and SCTIR_MODEL names each profile's weights.
T4_ONLY_SETTINGS = {
    "SCTIR_REVISION",
    "SCTIR_QUANTIZATION",
    "SCTIR_DTYPE",
    "SCTIR_ATTENTION_BACKEND",
    "SCTIR_TENSOR_PARALLEL_SIZE",
    "SCTIR_GPU_MEMORY_UTILIZATION",
    "SCTIR_MAX_MODEL_LEN",
}


def config(files: list[str], **env: str) -> dict:
    """`docker-compose config` of `files`, with none of this shell's knobs (so: the defaults) but `env`."""
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose not installed (Debian package docker-compose)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SCTIR_", "GRAFANA_", "HF_"))}
    run = subprocess.run(
        [compose, *files, "config"], cwd=ROOT, env=clean | env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    return yaml.safe_load(run.stdout)


def test_both_profiles_have_the_same_services_networks_and_volumes() -> None:
    t4, cpu = config(T4), config(CPU)
    assert (
        sorted(t4["services"])
        == sorted(cpu["services"])
        == sorted(["sandbox-image", "weights", "docker-api", "solver", "prometheus", "grafana"])
    )
    assert t4["networks"] == cpu["networks"]
    assert t4["networks"]["docker-api"]["internal"] is True
    assert t4["volumes"] == cpu["volumes"]


def test_services_differ_only_in_their_images_builds_gpus_and_t4_settings() -> None:
    t4, cpu = config(T4)["services"], config(CPU)["services"]
    for name in t4:
        shared_t4 = {k: v for k, v in t4[name].items() if k not in PER_PROFILE_KEYS | {"environment"}}
        shared_cpu = {k: v for k, v in cpu[name].items() if k not in PER_PROFILE_KEYS | {"environment"}}
        assert shared_t4 == shared_cpu, name  # healthchecks, depends_on, volumes, networks, ports, restart...
        t4_env, cpu_env = t4[name].get("environment", {}), cpu[name].get("environment", {})
        differing = {k for k in t4_env.keys() | cpu_env.keys() if t4_env.get(k) != cpu_env.get(k)}
        assert differing <= T4_ONLY_SETTINGS | {"SCTIR_MODEL"}, (name, differing)
        assert set(cpu_env) - set(t4_env) == set(), name


def test_the_cpu_profile_builds_what_cannot_be_pulled_and_needs_no_gpu() -> None:
    cpu = config(CPU)["services"]
    for name in ("weights", "solver", "docker-api", "prometheus", "sandbox-image"):
        assert "build" in cpu[name] and cpu[name]["image"].startswith("sctir-"), name
        assert "deploy" not in cpu[name], name
    assert cpu["grafana"]["profiles"] == ["grafana"]  # its image needs a registry: only on request
    assert cpu["solver"]["image"] == cpu["weights"]["image"] == "sctir-solver-cpu:latest"
    assert cpu["solver"]["environment"]["SCTIR_MODEL"] == "/opt/sctir/models/demo"
    t4 = config(T4)["services"]
    assert t4["docker-api"]["image"] == "tecnativa/docker-socket-proxy:0.3.0"
    assert t4["solver"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_the_socket_proxy_is_reachable_only_on_its_internal_network() -> None:
    for files in (T4, CPU):
        services = config(files)["services"]
        assert list(services["docker-api"]["networks"]) == ["docker-api"]
        assert "ports" not in services["docker-api"]
        reaching = sorted(name for name, service in services.items() if "docker-api" in service.get("networks", {}))
        assert reaching == ["docker-api", "solver"]
        assert services["solver"]["environment"]["DOCKER_HOST"] == "tcp://docker-api:2375"


def published(services: dict) -> dict[str, list[str]]:
    """The host address of each published port (compose prints them as host_ip:published:target/protocol)."""
    return {name: [port.rsplit(":", 2)[0] for port in service.get("ports", [])] for name, service in services.items()}


def test_published_ports_listen_on_loopback_unless_told_otherwise() -> None:
    for files in (T4, CPU):
        ports = published(config(files)["services"])
        assert ports["solver"] == ports["prometheus"] == ports["grafana"] == ["127.0.0.1"], ports
        assert all(ips == [] for name, ips in ports.items() if name not in ("solver", "prometheus", "grafana"))
        exposed = published(config(files, SCTIR_BIND="0.0.0.0")["services"])
        assert exposed["solver"] == exposed["prometheus"] == exposed["grafana"] == ["0.0.0.0"]


def test_grafana_has_no_default_password() -> None:
    grafana = config(T4)["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == ""
    script = grafana["entrypoint"][-1].replace("$$", "$")  # compose's escape of a literal $
    refused = subprocess.run(["sh", "-c", script.replace("exec /run.sh", "echo started")], env={}, capture_output=True)
    assert refused.returncode != 0 and b"GRAFANA_ADMIN_PASSWORD" in refused.stderr
    chosen = config(T4, GRAFANA_ADMIN_PASSWORD="s3cret")["services"]["grafana"]["environment"]
    assert chosen["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"
    started = subprocess.run(
        ["sh", "-c", script.replace("exec /run.sh", "echo started")],
        env={"GF_SECURITY_ADMIN_PASSWORD": "s3cret"},
        capture_output=True,
    )
    assert started.stdout == b"started\n"

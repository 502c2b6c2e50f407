"""The cluster's deployment files, offline: the Serve config builds the application with its options, the
KubeRay RayService carries that same application and what our pods need, the Prometheus config validates,
and `sctir cluster` parses its settings. No Ray cluster or Kubernetes runs here (tests/test_cluster.py
starts a real Ray cluster; nothing here can show a RayService running: README "Scaling out" says so)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from service.cli.main import build_parser
from service.cluster.node_settings import overrides
from service.machine import DEMO_CONTEXT_TOKENS, choose
from service.settings import Settings

RAY_MISSING = "Ray Serve is not installed: pip install 'ray[serve]==2.60.0' (the cluster extra)"
pytest.importorskip("ray.serve", reason=RAY_MISSING, exc_type=ImportError)

from ray.serve._private.api import call_user_app_builder_with_args_if_necessary  # noqa: E402
from ray.serve._private.build_app import build_app  # noqa: E402
from ray.serve._private.utils import import_attr  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from service.cluster.app import ENGINE, SOLVER, build_from_args  # noqa: E402
from service.cluster.launch import APP, deployment_options  # noqa: E402
from service.cluster.router import AffinityRouter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "deploy" / "ray" / "serve.yaml"
RAYSERVICE = ROOT / "deploy" / "k8s" / "rayservice.yaml"


def serve_config() -> dict[str, Any]:
    return yaml.safe_load(SERVE_CONFIG.read_text())


def built_deployments(config: dict[str, Any]) -> dict[str, Any]:
    """The application's deployments as `serve run` builds them, by name, each with the config file's options
    for it applied the way Serve's controller overrides code with the file."""
    (app,) = config["applications"]
    application = call_user_app_builder_with_args_if_necessary(import_attr(app["import_path"]), app["args"])
    built = build_app(application, name=app["name"])
    built.validate_single_fastapi_ingress()
    deployments = {deployment.name: deployment for deployment in built.deployments}
    for options in ServeDeploySchema.model_validate(config).applications[0].deployments:
        overrides = options.model_dump(exclude_unset=True, exclude={"name"})
        deployments[options.name] = deployments[options.name].options(**overrides)
    return {"ingress": built.ingress_deployment_name, **deployments}


def test_the_serve_config_builds_both_deployments_with_its_options() -> None:
    config = serve_config()
    deployments = built_deployments(config)
    assert deployments.pop("ingress") == SOLVER
    assert set(deployments) == {ENGINE, SOLVER}
    engine, solver = deployments[ENGINE], deployments[SOLVER]
    assert engine.ray_actor_options["num_gpus"] == 1
    assert engine._deployment_config.autoscaling_config.max_replicas == 8
    assert engine._deployment_config.request_router_config.get_request_router_class() is AffinityRouter
    assert solver._deployment_config.autoscaling_config.target_ongoing_requests == 2
    assert solver._replica_config.max_replicas_per_node == 1
    given = engine.init_args[0]
    assert solver.init_args[0] == given  # both deployments: the same settings, resolved on each replica's node
    assert given["model"] == config["applications"][0]["args"]["model"]
    assert given["num_samples"] == config["applications"][0]["args"]["num_samples"]
    assert config["applications"][0]["name"] == APP


def test_a_serve_config_arg_that_is_no_setting_fails_the_build() -> None:
    with pytest.raises(ValueError, match="num_sample"):
        build_from_args({"model": "m", "num_sample": 8})


# A node other than the builder: a fresh interpreter (as a Ray worker is) that sees 7 CPUs, runs another
# Python, and has SCTIR_* of its own in its environment.
OTHER_NODE = """
import os, pickle, sys
os.cpu_count = lambda: 7
sys.executable = "/opt/node/bin/python"
from service.cluster.node_settings import resolve
print(resolve(pickle.loads(sys.stdin.buffer.read())).model_dump_json())
"""


def test_a_replica_resolves_the_node_dependent_settings_on_its_own_node(demo_model: Path) -> None:
    built = Settings(model=str(demo_model), num_samples=4, executor="local")
    given = overrides(built)
    assert {"execution_concurrency", "python", "kv_cache_memory_bytes"}.isdisjoint(given)  # the builder's: not sent
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCTIR_NUM_SAMPLES": "9", "SCTIR_SANDBOX_POOL_NAME": "node-pool"}
    node = subprocess.run(
        [sys.executable, "-c", OTHER_NODE], input=pickle.dumps(given), env=env, capture_output=True, check=True
    )
    resolved = Settings.model_validate_json(node.stdout)
    assert (resolved.execution_concurrency, resolved.python) == (7, "/opt/node/bin/python")  # the node's own
    assert resolved.num_samples == 4  # what was set at the build wins over the node's environment...
    assert resolved.sandbox_pool_name == "node-pool"  # ...which fills what was not set
    assert (resolved.model, resolved.engine, resolved.executor) == (str(demo_model), "vllm", "local")
    assert resolved.kv_cache_memory_bytes and resolved.max_model_len == DEMO_CONTEXT_TOKENS  # the demo's, resolved


def test_the_replicas_serve_the_model_chosen_where_the_app_is_built() -> None:
    assert overrides(Settings())["model"] == choose(Settings(engine="vllm")).model  # not each replica's own pick


def test_cluster_up_options_come_from_the_settings() -> None:
    engine, solver = deployment_options(Settings(ray_engine_replicas=3, ray_solver_replicas=2, ray_engine_gpus=1))
    assert (engine, solver) == ({"num_replicas": 3, "ray_actor_options": {"num_gpus": 1}}, {"num_replicas": 2})
    engine, _ = deployment_options(Settings())
    assert engine == {"num_replicas": 1}  # on CPU: no GPU asked for, or no replica would ever be placed


def test_sctir_cluster_takes_up_or_down_and_the_settings_flags() -> None:
    args, rest = build_parser().parse_known_args(["cluster", "up", "--ray-engine-replicas", "2"])
    assert (args.command, args.action) == ("cluster", "up")
    assert Settings(_cli_parse_args=rest).ray_engine_replicas == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cluster", "sideways"])


# What our RayService must hold, written here from the fields our deployment uses (KubeRay's CRD is not
# vendored): extra fields are allowed, as the CRD allows many more.
class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class Probe(Loose):
    httpGet: dict[str, Any]


class Container(Loose):
    name: str
    image: str
    resources: dict[str, dict[str, Any]] = Field(default_factory=dict)
    readinessProbe: Probe | None = None
    livenessProbe: Probe | None = None
    env: list[dict[str, str]] = Field(default_factory=list)


class PodSpec(Loose):
    containers: list[Container]
    volumes: list[dict[str, Any]] = Field(default_factory=list)


class PodTemplate(Loose):
    metadata: dict[str, Any]
    spec: PodSpec


class HeadGroup(Loose):
    rayStartParams: dict[str, str]
    template: PodTemplate


class WorkerGroup(HeadGroup):
    groupName: str
    minReplicas: int = Field(ge=0)
    maxReplicas: int = Field(ge=1)


class RayClusterSpec(Loose):
    rayVersion: str
    headGroupSpec: HeadGroup
    workerGroupSpecs: list[WorkerGroup] = Field(min_length=1)


class RayServiceSpec(Loose):
    serveConfigV2: str
    rayClusterConfig: RayClusterSpec


class RayService(Loose):
    apiVersion: Literal["ray.io/v1"]
    kind: Literal["RayService"]
    metadata: dict[str, Any]
    spec: RayServiceSpec


def rayservice() -> RayService:
    return RayService.model_validate(yaml.safe_load(RAYSERVICE.read_text()))


def test_the_rayservice_serves_the_serve_configs_application() -> None:
    """One source of truth: the RayService's serveConfigV2 is deploy/ray/serve.yaml's config, and valid."""
    served = yaml.safe_load(rayservice().spec.serveConfigV2)
    assert served == serve_config()
    ServeDeploySchema.model_validate(served)


def test_the_rayservice_runs_the_ray_of_our_dependency() -> None:
    import ray

    assert rayservice().spec.rayClusterConfig.rayVersion == ray.__version__


def test_the_gpu_workers_hold_a_gpu_each_and_are_probed_on_the_solvers_endpoints() -> None:
    (worker,) = rayservice().spec.rayClusterConfig.workerGroupSpecs
    ray_worker = next(c for c in worker.template.spec.containers if c.name == "ray-worker")
    assert ray_worker.resources["limits"]["nvidia.com/gpu"] == 1
    engine_gpus = serve_config()["applications"][0]["deployments"][0]["ray_actor_options"]["num_gpus"]
    assert ray_worker.resources["limits"]["nvidia.com/gpu"] >= engine_gpus
    assert ray_worker.readinessProbe and ray_worker.readinessProbe.httpGet["path"] == "/readyz"
    assert ray_worker.livenessProbe and ray_worker.livenessProbe.httpGet["path"] == "/healthz"
    serve_port = serve_config()["http_options"]["port"]
    assert ray_worker.readinessProbe.httpGet["port"] == ray_worker.livenessProbe.httpGet["port"] == serve_port


def test_only_the_socket_proxy_holds_the_nodes_docker_socket() -> None:
    (worker,) = rayservice().spec.rayClusterConfig.workerGroupSpecs
    spec = worker.template.spec
    socket_volumes = {v["name"] for v in spec.volumes if v.get("hostPath", {}).get("path") == "/var/run/docker.sock"}
    mounts = {c.name: {m["name"] for m in (c.model_extra or {}).get("volumeMounts", [])} for c in spec.containers}
    holders = {name for name, volumes in mounts.items() if volumes & socket_volumes}
    assert holders == {"docker-api"}
    ray_worker = next(c for c in spec.containers if c.name == "ray-worker")
    docker_host = next(e["value"] for e in ray_worker.env if e["name"] == "DOCKER_HOST")
    proxy = next(c for c in spec.containers if c.name == "docker-api")
    bind = next(e["value"] for e in proxy.env if e["name"] == "BIND_CONFIG")
    assert docker_host == f"unix://{bind.split()[0]}"  # a Unix socket: no port any other pod could reach


def test_the_proxys_unix_socket_bind_is_valid_haproxy(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy") or pytest.skip("haproxy not installed (Debian package haproxy)")
    (worker,) = rayservice().spec.rayClusterConfig.workerGroupSpecs
    proxy = next(c for c in worker.template.spec.containers if c.name == "docker-api")
    bind = next(e["value"] for e in proxy.env if e["name"] == "BIND_CONFIG")
    bind = bind.replace(bind.split()[0], str(tmp_path / "docker.sock"))
    config = tmp_path / "haproxy.cfg"
    config.write_text((ROOT / "deploy/docker-api/haproxy.cfg").read_text().replace("${BIND_CONFIG}", bind))
    env = {**os.environ, "SOCKET_PATH": "/var/run/docker.sock", "LOG_LEVEL": "info"}
    run = subprocess.run([haproxy, "-c", "-f", str(config)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_pod_is_scraped_on_rays_metrics_port() -> None:
    cluster = rayservice().spec.rayClusterConfig
    for group in (cluster.headGroupSpec, *cluster.workerGroupSpecs):
        annotations = group.template.metadata["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == group.rayStartParams["metrics-export-port"]


def kubectl() -> str:
    return shutil.which("kubectl") or pytest.skip("kubectl not installed (the Kubernetes client)")


def test_kustomize_renders_the_rayservice_and_its_pod_monitor() -> None:
    run = subprocess.run([kubectl(), "kustomize", str(RAYSERVICE.parent)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    kinds = sorted((doc["apiVersion"], doc["kind"]) for doc in yaml.safe_load_all(run.stdout))
    assert kinds == [("monitoring.coreos.com/v1", "PodMonitor"), ("ray.io/v1", "RayService")]


def test_the_ray_prometheus_config_validates() -> None:
    promtool = shutil.which("promtool") or shutil.which(str(Path(sys.executable).parent / "promtool"))
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    run = subprocess.run([promtool, "check", "config", "deploy/ray/prometheus.yml"], cwd=ROOT, capture_output=True)
    assert run.returncode == 0, run.stdout + run.stderr

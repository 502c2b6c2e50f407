"""The Docker backend: runners in hardened containers of the sandbox image, over the Docker SDK.

The SDK is imported where it is used, so that the local executor needs none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass

from sandbox.backends.base import Backend, SandboxUnavailable, Slot
from sandbox.backends.owners import LABEL_POOL, container_labels, is_leftover
from sandbox.connection import RunnerConnection

log = logging.getLogger(__name__)

GVISOR_MIN_PIDS = 1024
WORKROOT = "/run/sctir"  # the runner's per-execution directories, in a container: a tmpfs of its own
UNISOLATED = "or run code unisolated on this host with SCTIR_EXECUTOR=local"


@dataclass
class DockerLimits:
    """How every sandbox container is confined (the defaults suit a 2-core, 8+ GiB host)."""

    memory: str = "1g"  # also the memory+swap limit: no swap
    pids: int = 256
    cpus: float = 1.0
    tmpfs_size: str = "64m"  # /tmp; the runner's work root (WORKROOT) gets as much
    inodes: int = 16384  # files and directories in each of them (tmpfs nr_inodes): no inode flood
    runtime: str | None = None  # e.g. "runsc" for gVisor
    user: str = "10001:10001"
    shm_size: str = "16m"
    nofile: int = 1024

    @property
    def host_pids(self) -> int:
        """The cgroup's pids limit. Under gVisor it counts the sandbox kernel's own host threads (the
        sandboxed processes are its tasks, bound by the memory limit): below ~1024 the kernel itself
        fails to start threads under load and the container dies."""
        return max(self.pids, GVISOR_MIN_PIDS) if self.runtime == "runsc" else self.pids


def _no_engine(error: BaseException) -> SandboxUnavailable:
    """The engine cannot be reached: where it was looked for, the system's reason, and the ways out."""
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    cause = error
    while cause.__cause__ or cause.__context__:  # the OSError at the bottom says why (no socket, refused...)
        cause = cause.__cause__ or cause.__context__
    reason = f" ({cause.strerror})" if isinstance(cause, OSError) and cause.strerror else ""
    if isinstance(cause, PermissionError):
        return SandboxUnavailable(
            f"the Docker engine at {where} refuses this user{reason}: add the user to the docker group "
            f"(`sudo usermod -aG docker $USER`, then log in again), {UNISOLATED}"
        )
    return SandboxUnavailable(
        f"no Docker engine answers at {where}{reason}: start Docker (e.g. `sudo systemctl start docker`, "
        f"or scripts/start-dockerd.sh), {UNISOLATED}"
    )


class DockerBackend(Backend):
    """Runners in hardened containers of the sandbox image, over the Docker SDK.

    Every container: network_mode=none, read-only root, a size-limited noexec
    tmpfs on /tmp, memory (= memory+swap), pids and CPU limits, all
    capabilities dropped, no-new-privileges, a non-root user, no core files,
    the `none` log driver (the protocol never lands on disk), optionally
    another runtime such as runsc; labelled with the pool name and its owner
    process (see sandbox/backends/owners.py), so a later start removes only a
    gone owner's leftovers.
    """

    name = "docker"
    unit = "container"
    remedy = "rebuild the sandbox image: `make sandbox-image` (scripts/build-sandbox-image.sh)"

    def __init__(
        self,
        image: str = "sctir-sandbox:latest",
        pool_name: str = "sctir",
        limits: DockerLimits | None = None,
        environment: dict[str, str] | None = None,
        client=None,
        runner_args: list[str] | None = None,
        confine: bool = True,
    ) -> None:
        self.image = image
        self.confine = confine  # Landlock file rules per execution; off only to measure what they cost
        self.pool_name = pool_name
        self.limits = limits or DockerLimits()
        self.environment = dict(environment or {})
        self.client = client
        self.runner_args = list(runner_args or [])
        self.created: set[str] = set()  # names of the containers made and not known to be removed
        self.closing = False  # set by cleanup(): a container created after it removes itself

    def _client(self):
        if self.client is None:
            try:
                import docker
            except ImportError:
                raise SandboxUnavailable(
                    f"the Docker SDK is not installed: `pip install docker`, {UNISOLATED}"
                ) from None
            try:
                self.client = docker.from_env(version="auto")
                self.client.ping()
            except Exception as error:
                self.client = None
                raise _no_engine(error) from error
        return self.client

    def _image_missing(self) -> SandboxUnavailable:
        return SandboxUnavailable(
            f"the sandbox image {self.image} is not built: run `make sandbox-image` (scripts/build-sandbox-image.sh), "
            "or set SCTIR_SANDBOX_IMAGE"
        )

    def _fault(self, error: Exception) -> SandboxUnavailable:
        """What a failed container launch means, in the words of the start-up checks where it is one of theirs."""
        import docker.errors
        import requests.exceptions

        if isinstance(error, SandboxUnavailable):
            return error
        if isinstance(error, docker.errors.ImageNotFound):
            return self._image_missing()
        if isinstance(error, requests.exceptions.ConnectionError):
            return _no_engine(error)
        return SandboxUnavailable(f"the Docker engine could not start a sandbox container: {error}")

    async def prepare(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        import docker.errors

        self.closing = False
        client = self._client()
        try:
            client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise self._image_missing() from None
        if self.limits.runtime:
            runtimes = client.info().get("Runtimes", {})
            if self.limits.runtime not in runtimes:
                known = ", ".join(sorted(runtimes))
                raise SandboxUnavailable(
                    f"the Docker engine has no runtime {self.limits.runtime!r} (it has: {known}): register it with "
                    "the engine (for gVisor's runsc, scripts/start-dockerd.sh installs and registers it), "
                    "or unset SCTIR_SANDBOX_RUNTIME"
                )
        reaped = self._reap()
        if reaped:
            log.warning("removed %d leftover sandbox container(s) of pool %r", reaped, self.pool_name)

    def _reap(self) -> int:
        """Remove this pool name's leftovers: the containers of owners that are gone (see is_leftover).

        Never every container of the name: another process sharing it (a running service, an
        in-process `sctir solve`) is using its containers.
        """
        client = self._client()
        containers = client.containers.list(
            all=True, sparse=True, filters={"label": [f"{LABEL_POOL}={self.pool_name}"]}
        )
        reaped = 0
        now = time.time()
        for container in containers:
            leftover, why = is_leftover(container.attrs, now)
            name = container.short_id
            if not leftover:
                log.debug("sandbox container %s of pool %r left alone: %s", name, self.pool_name, why)
                continue
            try:
                container.remove(force=True)
            except Exception as error:  # already gone (its owner removed it), or the engine refused
                log.debug("leftover sandbox container %s not removed: %s", name, error)
                continue
            log.info("removed leftover sandbox container %s of pool %r: %s", name, self.pool_name, why)
            reaped += 1
        return reaped

    async def launch(self, name: str, spares: int) -> tuple[RunnerConnection, object]:
        try:
            container, sock = await asyncio.to_thread(self._create, name, spares)
        except Exception as error:
            raise self._fault(error) from error
        # Our own dup of the attach socket, for asyncio; the SDK's objects stay referenced in the handle.
        raw = getattr(sock, "_sock", sock)
        ours = socket.socket(fileno=os.dup(raw.fileno()))
        ours.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=ours, limit=1 << 20)
        conn = RunnerConnection(reader, writer, name=name, multiplexed=True)
        handle = {"container": container, "sock": sock}
        try:
            await asyncio.to_thread(container.start)
        except Exception as error:
            await conn.close()
            await asyncio.to_thread(self._remove, container)
            raise self._fault(error) from error
        return conn, handle

    def _host_config(self) -> dict:
        """The confinement of a container (see the class docstring), for the engine's create call."""
        import docker.types

        limits = self.limits
        return self._client().api.create_host_config(
            network_mode="none",
            read_only=True,
            # Owned by root, mode 1777: the sandbox user can neither chmod nor remove the mount roots.
            tmpfs={
                path: f"rw,nosuid,nodev,noexec,size={limits.tmpfs_size},nr_inodes={limits.inodes},mode=1777"
                for path in ("/tmp", WORKROOT)
            },
            mem_limit=limits.memory,
            memswap_limit=limits.memory,
            pids_limit=limits.host_pids,
            nano_cpus=int(limits.cpus * 1e9),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            log_config=docker.types.LogConfig(type="none"),
            ulimits=[
                docker.types.Ulimit(name="core", soft=0, hard=0),
                docker.types.Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile),
            ],
            shm_size=limits.shm_size,
            runtime=limits.runtime or None,
        )

    def _create(self, name: str, spares: int):
        """Create container `name` and attach to it (not started yet): the container and its attach socket."""
        client = self._client()
        api = client.api
        host_config = self._host_config()
        # Listed by name before the engine answers: a container whose creation answer is lost (a proxy
        # restarting) exists all the same, and cleanup() removes it.
        self.created.add(name)
        created = api.create_container(
            self.image,
            command=[
                "--purge-tmp",
                *(["--confine"] if self.confine else []),
                *("--workroot", WORKROOT, "--spares", str(spares)),
                *self.runner_args,
            ],
            name=name,
            hostname="sandbox",
            user=self.limits.user,
            environment=self.environment,
            labels=container_labels(self.pool_name),
            # Not detached, stdin open: attached stdin/stdout/stderr and StdinOnce, so when our
            # connection ends the runner reads EOF and the container stops.
            detach=False,
            stdin_open=True,
            tty=False,
            network_disabled=True,
            host_config=host_config,
        )
        container = client.containers.get(created["Id"])
        if self.closing:  # cleanup() ran while this thread was creating it (its task was cancelled)
            self._remove(container)
            raise SandboxUnavailable("the pool is closed")
        try:
            sock = api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        except Exception:
            self._remove(container)
            raise
        return container, sock

    def _remove(self, container) -> None:
        """Remove `container`; one the engine could not be asked to remove (unreachable: a proxy restarting)
        stays in `created`, so cleanup() tries again and nothing is left behind."""
        import docker.errors

        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except Exception as error:
            log.debug("sandbox container %s not removed yet: %s", container.short_id, error)
            return
        self.created.discard(container.name)

    async def death_reason(self, slot: Slot) -> str:
        container = slot.handle["container"]

        def inspect() -> str:
            try:
                container.reload()
            except Exception as error:
                return f"the container is gone ({error.__class__.__name__})"
            state = container.attrs.get("State", {})
            if state.get("OOMKilled"):
                return f"the container ran out of memory (exit code {state.get('ExitCode')})"
            if state.get("Running"):
                return slot.conn.lost or "it stopped answering"
            return f"the container exited (exit code {state.get('ExitCode')})"

        return await asyncio.to_thread(inspect)

    async def stop(self, slot: Slot) -> None:
        handle = slot.handle
        if slot.conn.lost is None:
            with contextlib.suppress(Exception):
                slot.conn.send({"op": "shutdown", "id": 0})
        await slot.conn.close()
        with contextlib.suppress(Exception):
            handle["sock"].close()
        await asyncio.to_thread(self._remove, handle["container"])

    async def cleanup(self) -> None:
        self.closing = True
        if not self.created or self.client is None:
            return

        def remove_all() -> None:
            for name in list(self.created):
                with contextlib.suppress(Exception):
                    self.client.containers.get(name).remove(force=True)
                self.created.discard(name)

        await asyncio.to_thread(remove_all)

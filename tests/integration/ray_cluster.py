"""A real multi-node Ray cluster on this machine, started with ``ray start`` and stopped by PID.

The head runs with token authentication (``RAY_AUTH_MODE=token``, the token in a file
under a temporary HOME, so the user's ``~/.ray`` is never touched) and its job server on
127.0.0.1. Ray 2.60 resolves ``--node-ip-address=127.0.0.1`` to the machine's reachable
address (``services.resolve_ip_for_localhost``) and its GCS and raylets listen on all
interfaces; the dashboard (job server) binds 127.0.0.1 as asked.

Every process is found by the cluster's own ``--temp-dir`` in its command line (GCS,
raylets, dashboard, monitors), plus their descendants (workers, agents); ``stop`` kills
exactly those PIDs, never ``ray stop``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _parents() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(roots: set[int]) -> set[int]:
    """``roots`` and every process below them."""
    parents = _parents()
    found, grew = set(roots), True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    return found


def processes_titled(title: str) -> list[int]:
    """PIDs whose command line starts with ``title`` (Ray sets ``ray::ClassName``)."""
    return [pid for pid in _all_pids() if _cmdline(pid).startswith(title)]


class LocalCluster:
    """A token-authenticated head plus extra ``ray start`` nodes, all in ``root``."""

    def __init__(self, head_cpus: int = 1):
        # a short temp dir: Ray's socket paths must stay under 108 characters
        self.root = Path(tempfile.mkdtemp(prefix="slc-", dir="/tmp"))
        self.temp_dir = self.root / "rt"
        home = self.root / "home"
        home.mkdir()
        self.token = secrets.token_hex(16)
        self.token_path = home / "token"
        self.token_path.write_text(self.token)
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "HOME": str(home),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray's memory monitor kills workers when the *machine* is over 95 % used, which
            # on a shared machine other processes decide; the tests kill what they mean to
            "RAY_memory_monitor_refresh_ms": "0",
        }
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.env.pop("RAY_ADDRESS", None)
        self._ray_start(
            "--head",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            f"--num-cpus={head_cpus}",
            f"--temp-dir={self.temp_dir}",
        )
        self.head_raylet = self.raylets()[0]
        self._wait_for_job_server()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ray_start(self, *args: str) -> None:
        command = [
            RAY,
            "start",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            # free ports, not Ray's fixed defaults (another Ray on this machine may hold them)
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            *args,
        ]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{result.stdout}\n{result.stderr}")

    def add_node(self, cpus: int, resources: str) -> int:
        """Start a worker node with ``cpus`` CPUs and ``resources`` (JSON); its raylet PID."""
        before = set(self.raylets())
        self._ray_start(
            f"--address=127.0.0.1:{self.gcs_port}",
            f"--num-cpus={cpus}",
            f"--resources={resources}",
        )
        (raylet,) = set(self.raylets()) - before
        return raylet

    def _wait_for_job_server(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                request = urllib.request.Request(
                    f"{self.address}/api/version",
                    headers={"Authorization": f"Bearer {self.token}"},
                )
                urllib.request.urlopen(request, timeout=2)
                return
            except (OSError, urllib.error.HTTPError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def raylets(self) -> list[int]:
        """Raylet PIDs of this cluster, oldest (the head's) first."""
        return sorted(
            pid
            for pid in _all_pids()
            if "raylet/raylet " in _cmdline(pid) and str(self.temp_dir) in _cmdline(pid)
        )

    def pids(self) -> set[int]:
        """Every process of this cluster: those naming its temp dir, and their descendants."""
        roots = {pid for pid in _all_pids() if str(self.temp_dir) in _cmdline(pid)}
        return descendants(roots) - {os.getpid()}

    def kill_node(self, raylet: int) -> None:
        """SIGKILL one node: its raylet and every process below it (as a lost machine)."""
        pids = descendants({raylet})
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        """Terminate every process of this cluster by PID, then SIGKILL what is left."""
        pids = self.pids()
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

"""A local MultiWorkerMirroredStrategy cluster on 127.0.0.1: free ports, timeouts, cleanup.

Each worker is a process in its own session, started with its `TF_CONFIG`;
whatever happens, `Cluster.stop()` kills every process group it started and
the ports are left with no listener.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

WORKER = Path(__file__).with_name("mwms_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def free_ports(count: int) -> list[int]:
    """Ports that nothing listens on: bound to port 0 on 127.0.0.1, then released."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def tf_config(ports: list[int], index: int) -> str:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", **extra}


def start_single(args: list[str], log_dir: Path, timeout: float = 150.0) -> subprocess.Popen:
    """Starts the worker script as one process without `TF_CONFIG` (one device, no strategy)."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(log_dir) / "single.log", "ab") as log:
        return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.DEVNULL, stderr=log,
                                stdin=subprocess.DEVNULL, env=worker_env(WORKER_TIMEOUT=str(timeout)), cwd=ROOT,
                                start_new_session=True)


class Cluster:
    """Runs `mwms_worker.py` once per port, each with its own `TF_CONFIG`.

    Args:
        args: Command-line arguments of the worker script.
        ports: The workers' ports (the cluster's size).
        log_dir: Where each worker's stderr goes (`worker<i>.log`).
        timeout: Seconds the whole run may take before every worker is killed.
    """

    def __init__(self, args: list[str], ports: list[int], log_dir: Path, timeout: float = 150.0) -> None:
        self.args, self.ports, self.log_dir = args, ports, Path(log_dir)
        self.deadline = time.monotonic() + timeout
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Cluster:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(len(self.ports)):
            env = worker_env(TF_CONFIG=tf_config(self.ports, index), WORKER_TIMEOUT=str(max(self.remaining(), 1.0)))
            with open(self.log_dir / f"worker{index}.log", "ab") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, str(WORKER), *self.args], stdout=subprocess.PIPE, stderr=log,
                    stdin=subprocess.DEVNULL, env=env, cwd=ROOT, start_new_session=True, text=True))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def wait_for_line(self, index: int, marker: str) -> None:
        """Reads worker `index`'s stdout until a line equals `marker` (or the deadline passes)."""
        stream = self.procs[index].stdout
        while self.remaining() > 0:
            ready, _, _ = select.select([stream], [], [], self.remaining())
            line = stream.readline() if ready else ""
            if line.strip() == marker:
                return
            if ready and not line:
                raise RuntimeError(f"worker {index} exited before printing {marker!r}: {self.stderr(index)}")
        raise TimeoutError(f"worker {index} did not print {marker!r} in time: {self.stderr(index)}")

    def kill(self, index: int) -> None:
        """SIGKILLs worker `index` and its children."""
        proc = self.procs[index]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def wait(self, index: int) -> int | None:
        """Waits for worker `index` until the deadline; returns its exit code (None: killed at the deadline)."""
        try:
            return self.procs[index].wait(timeout=max(self.remaining(), 0.1))
        except subprocess.TimeoutExpired:
            self.kill(index)
            return None

    def run(self) -> list[int | None]:
        """Waits for every worker; returns their exit codes."""
        return [self.wait(i) for i in range(len(self.procs))]

    def stop(self) -> None:
        for index in range(len(self.procs)):
            self.kill(index)
            if self.procs[index].stdout is not None:
                self.procs[index].stdout.close()

    def stderr(self, index: int) -> str:
        return (self.log_dir / f"worker{index}.log").read_text(errors="replace")[-3000:]

"""A local multi-process JAX run on 127.0.0.1: a free coordinator port, timeouts, cleanup.

The processes of `JaxProcesses` are those of `mwms_cluster.Cluster` (each in its
own session, one deadline for all, every process group killed on exit), started
with Keras's `KERAS_DISTRIBUTION_*` variables instead of `TF_CONFIG`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.distributed import mwms_cluster


def jax_env(**extra: str) -> dict[str, str]:
    """The environment of a JAX process: no `TF_CONFIG`, no `KERAS_DISTRIBUTION_*`, no forced devices."""
    env = mwms_cluster.worker_env(KERAS_BACKEND="jax", **extra)
    inherited = ("KERAS_DISTRIBUTION_", "XLA_FLAGS")
    return {k: v for k, v in env.items() if not k.startswith(inherited) or k in extra}


def start(script: Path, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Starts `python script *args` in its own session, stderr to `log`, stdout discarded."""
    with open(log, "ab") as stream:
        return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.DEVNULL, stderr=stream,
                                stdin=subprocess.DEVNULL, env=env, cwd=mwms_cluster.ROOT, start_new_session=True)


class JaxProcesses(mwms_cluster.Cluster):
    """Runs a script as `count` JAX processes; process 0 coordinates on a free port of 127.0.0.1.

    Args:
        script: The script each process runs.
        args: Its command-line arguments.
        count: The number of processes.
        log_dir: Where each process's stderr goes (`worker<i>.log`).
        timeout: Seconds the whole run may take before every process is killed; each process also
            gets it as `WORKER_TIMEOUT`.
    """

    def __init__(self, script: Path, args: list[str], count: int, log_dir: Path, timeout: float = 150.0) -> None:
        self.script, self.port = Path(script), mwms_cluster.free_ports(1)[0]
        super().__init__(args, [self.port] * count, log_dir, timeout)

    def __enter__(self) -> JaxProcesses:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        count = len(self.ports)
        try:
            for index in range(count):
                env = jax_env(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{self.port}",
                              KERAS_DISTRIBUTION_NUM_PROCESSES=str(count), KERAS_DISTRIBUTION_PROCESS_ID=str(index),
                              WORKER_TIMEOUT=str(max(self.remaining(), 1.0)))
                self.procs.append(start(self.script, self.args, env, self.log_dir / f"worker{index}.log"))
        except BaseException:
            self.stop()  # the processes already started
            raise
        return self

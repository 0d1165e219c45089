"""JAX across processes: 2 processes on 127.0.0.1 (`keras.distribution.initialize`, gloo CPU
collectives) training under `keras.distribution.DataParallel`, against one device.

Every process runs in a subprocess with a deadline; the harness
(`tests/distributed/jax_cluster.py`) kills what it started and the tests check
that the coordinator's port is left with no listener.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.backends import seed_run
from tests.distributed import jax_cluster, mwms_cluster
from tests.helpers import documented_launch, read_run, scalars

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "distributed" / "jax_multiprocess_run.py"
TIMEOUT = 240  # a guard against hangs; the run takes about a minute on 2 loaded cores
CASES = ["ClipByGlobalNorm", "AutoClip"]  # the cases of `jax_multiprocess_run.py`, trained from a tf.data.Dataset
LOCAL_ARRAYS = "ClipByGlobalNorm_local_arrays"
STEPS = 2 * seed_run.STEPS  # 2 epochs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-process run and the one-device reference, side by side; their JSONs."""
    out = tmp_path_factory.mktemp("jax_multiprocess")
    (out / "single").mkdir()
    reference = jax_cluster.start(SCRIPT, [str(out / "single")], jax_cluster.jax_env(WORKER_TIMEOUT=str(TIMEOUT)),
                                  out / "single.log")
    try:
        with jax_cluster.JaxProcesses(SCRIPT, [str(out)], 2, out, timeout=TIMEOUT) as processes:
            codes = processes.run()
            logs = [processes.stderr(i) for i in range(2)]
        assert codes == [0, 0], logs
        assert reference.wait(timeout=TIMEOUT) == 0, (out / "single.log").read_text()[-3000:]
    finally:
        if reference.poll() is None:
            os.killpg(reference.pid, signal.SIGKILL)
            reference.wait()
    assert not mwms_cluster.listening(processes.port)
    results = {f"process{i}": json.loads((out / f"process{i}.json").read_text()) for i in range(2)}
    results["single"] = json.loads((out / "single" / "single.json").read_text())
    return results


def weights(result, case):
    return [np.asarray(w, np.float32) for w in result["cases"][case]["weights"]]


def assert_same_as_one_device(runs, case, reference_case):
    single = runs["single"]["cases"][reference_case]
    for process in ("process0", "process1"):
        ours = weights(runs[process], case)
        assert seed_run.relative_difference(ours, weights(runs["single"], reference_case)) <= 1e-5, process
        assert max(np.max(np.abs(w - r)) for w, r in zip(ours, weights(runs["single"], reference_case))) <= 1e-5
        logs = runs[process]["cases"][case]["batch_logs"]
        assert len(logs) == len(single["batch_logs"]) == STEPS
        for key in ("loss", "grad_norm", "clipped_grad_norm"):
            assert [step[key] for step in logs] == pytest.approx([step[key] for step in single["batch_logs"]],
                                                                 rel=1e-5), (process, key)
    for u, v in zip(weights(runs["process0"], case), weights(runs["process1"], case)):
        np.testing.assert_array_equal(u, v)  # one replicated array


@pytest.mark.slow
def test_two_processes_share_one_global_mesh(runs):
    for index in range(2):
        result = runs[f"process{index}"]
        assert (result["process_index"], result["process_count"]) == (index, 2)
        assert (result["devices"], result["local_devices"]) == (2, 1)
    assert (runs["single"]["process_count"], runs["single"]["devices"]) == (1, 1)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_processes_train_as_one_device(runs, case):
    """From a batched tf.data.Dataset of the global batches, which Keras shards between the processes."""
    assert_same_as_one_device(runs, case, case)
    # Guard: the clip decides (some steps clipped, others not), so a wrong global norm would show.
    logs = runs["single"]["cases"][case]["batch_logs"]
    clipped = sum(step["clipped_grad_norm"] < step["grad_norm"] * (1 - 1e-6) for step in logs)
    assert 0 < clipped < STEPS, clipped


@pytest.mark.slow
def test_each_process_feeds_its_half_of_every_global_batch(runs):
    x, _ = seed_run.data()
    half = seed_run.BATCH // 2
    for index in range(2):
        first, second = (np.asarray(b, np.float32) for b in runs[f"process{index}"]["local_batches"])
        np.testing.assert_array_equal(first, x[index * half : (index + 1) * half])
        np.testing.assert_array_equal(second, x[seed_run.BATCH + index * half : seed_run.BATCH + (index + 1) * half])


@pytest.mark.slow
def test_local_arrays_without_auto_sharding_train_as_one_device(runs):
    """Each process feeds NumPy arrays of its own half of every global batch (`auto_shard_dataset=False`)."""
    assert_same_as_one_device(runs, LOCAL_ARRAYS, "ClipByGlobalNorm")


@pytest.mark.slow
def test_numpy_arrays_with_auto_sharding_are_refused_by_keras(runs):
    """Keras's rule (docs/distributed.md): with several processes, auto-sharding takes a tf.data.Dataset."""
    for process in ("process0", "process1"):
        error = runs[process]["numpy_with_auto_shard"]
        assert error is not None and error.startswith(
            "When using a multi-worker distribution with auto-sharding enabled, the data must be provided as a "
            "`tf.data.Dataset` instance."
        ), error


@pytest.mark.slow
def test_gradient_norm_logger_writes_from_process_0_only(runs):
    run_dir = Path(runs["process0"]["cases"]["AutoClip"]["log_dir"]) / "train"
    files = sorted(p.name for p in run_dir.iterdir())
    assert len(files) == 1, files  # both processes were given this log_dir
    assert files[0].split(".")[-2] == str(runs["process0"]["pid"]), files
    ours = read_run(run_dir.parent)
    single = read_run(Path(runs["single"]["cases"]["AutoClip"]["log_dir"]))
    assert {"grad_norm/pre_clip", "grad_norm/post_clip", "grad_norm/threshold"} <= set(single)
    assert set(ours) == set(single)
    for tag in ("grad_norm/pre_clip", "grad_norm/post_clip", "grad_norm/threshold"):
        curve, reference = scalars(ours, tag), scalars(single, tag)
        assert [step for step, _ in curve] == [step for step, _ in reference] == list(range(1, STEPS + 1)), tag
        assert [v for _, v in curve] == pytest.approx([v for _, v in reference], rel=1e-5), tag


# --- The documented launch --------------------------------------------------------------------


@pytest.mark.slow
def test_documented_commands_train_two_processes(tmp_path):
    script, commands = documented_launch("Launching two JAX processes")
    assert "127.0.0.1:12345" in commands and "python train.py" in commands
    (tmp_path / "train.py").write_text(script)
    port = mwms_cluster.free_ports(1)[0]
    env = jax_cluster.jax_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    shell = subprocess.Popen(["bash", "-c", commands.replace("12345", str(port))], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = shell.communicate(timeout=TIMEOUT)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)  # the shell and both processes
            shell.communicate()
    assert not mwms_cluster.listening(port)
    lines = sorted(line for line in out.splitlines() if line.startswith("process "))
    assert [line.split(":")[0] for line in lines] == ["process 0", "process 1"], err[-3000:]
    assert lines[0].split(":")[1] == lines[1].split(":")[1]  # the same global figures
    assert len(list((tmp_path / "runs" / "jax" / "train").iterdir())) == 1  # process 0's event file


# --- Nothing hangs ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_process_left_alone_is_killed_at_the_deadline(tmp_path):
    """Process 1 is killed at once: process 0 waits for it in `initialize` until the harness kills it."""
    with jax_cluster.JaxProcesses(SCRIPT, [str(tmp_path)], 2, tmp_path, timeout=20) as processes:
        processes.kill(1)
        codes = processes.run()
        survivor = processes.procs[0]
    assert codes[0] is None  # killed at the deadline, not exited
    assert survivor.poll() is not None
    assert not mwms_cluster.listening(processes.port)
    assert not list(tmp_path.glob("process*.json"))

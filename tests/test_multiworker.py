"""MultiWorkerMirroredStrategy: 2 worker processes on 127.0.0.1 (TF_CONFIG, gRPC collectives), CPU.

Every cluster runs in subprocesses on free ports, with a deadline; the harness
(`tests/distributed/mwms_cluster.py`) kills what it started and the tests check
that no port is left listening. On CPU the step runs with jit off.
"""

import hashlib
import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer
from tensorboard.backend.event_processing import plugin_event_accumulator

import keras_clip as kc
from keras_clip.training import multiworker
from tests.distributed import mwms_cluster
from tests.helpers import documented_launch

ROOT = Path(__file__).resolve().parent.parent
# The cases of `mwms_worker.py train` (not imported: it is a worker's main module).
CLIPPING_CASES = ["functional_global_norm", "functional_autoclip", "sequential_zclip", "subclassed_global_norm"]
TRAIN_CASES = [*CLIPPING_CASES, "keras_no_clip"]  # the last: plain keras.Model with the override
ADAPTIVE_CASES = ["functional_autoclip", "sequential_zclip"]
UPSTREAM = "https://github.com/keras-team/keras/issues/20585"

# --- The Keras code the override depends on ---------------------------------------------------

# sha256 (first 16 hex digits) of the source of each private Keras function the override is
# written against (Keras 3.15.1).
PINNED = {
    "TensorFlowTrainer._make_function": (tf_trainer.TensorFlowTrainer._make_function, "bb33b7a0da3d2740"),
    "TensorFlowTrainer._maybe_symbolic_build": (tf_trainer.TensorFlowTrainer._maybe_symbolic_build, "92a504f5eba9b29f"),
    "reduce_per_replica": (tf_trainer.reduce_per_replica, "2e7d54b1e6edc29a"),
    "_collective_all_reduce_multi_worker": (tf_trainer._collective_all_reduce_multi_worker, "0302369d850e6694"),
}
RECHECK = (
    "keras_clip/training/multiworker.py overrides this private method of Keras's TensorFlow trainer. "
    f"Re-check against {UPSTREAM}: run the slow tests of tests/test_multiworker.py (does plain keras.Model "
    "still fail under MultiWorkerMirroredStrategy? then keep the override, check that it still applies, "
    "and update this pin; if plain Keras trains now, remove the override)."
)


def source(function):
    return " ".join(inspect.getsource(function).split())


@pytest.mark.parametrize("name", list(PINNED))
def test_overridden_keras_code_is_the_pinned_version(name):
    function, digest = PINNED[name]
    found = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    assert found == digest, f"Keras changed `{name}` (sha256 {found}, pinned {digest}). {RECHECK}"


def test_override_relies_on_these_exact_calls():
    trainer = tf_trainer.TensorFlowTrainer
    assert str(inspect.signature(trainer._maybe_symbolic_build)) == "(self, iterator=None, data_batch=None)", RECHECK
    assert str(inspect.signature(trainer._make_function)) == "(self, step_function)", RECHECK
    build = source(trainer._maybe_symbolic_build)
    assert "for _, _, it in iterator:" in build and "self.distribute_strategy.reduce(" in build, RECHECK
    assert "self._symbolic_build(data_batch=data_batch)" in build, RECHECK
    make = source(trainer._make_function)
    assert "self.distribute_strategy.run(step_function, args=(data,))" in make, RECHECK
    assert 'reduce_per_replica( outputs, self.distribute_strategy, reduction="auto", )' in make, RECHECK
    reduce = source(tf_trainer.reduce_per_replica)
    assert 'if _collective_all_reduce_multi_worker(strategy):' in reduce, RECHECK
    assert 'return strategy.reduce("MEAN", v, axis=0)' in reduce, RECHECK
    assert multiworker.is_multi_worker is tf_trainer._collective_all_reduce_multi_worker


def test_override_is_inert_off_multi_worker():
    assert not multiworker.is_multi_worker(tf.distribute.get_strategy())
    step = multiworker._with_leading_axis(lambda data: {"loss": tf.constant(2.0), "vector": tf.ones(3)})
    outputs = step(None)
    assert outputs["loss"].shape == (1,) and outputs["vector"].shape == (3,)


def test_callbacks_of_a_non_chief_worker_write_nothing(tmp_path):
    not_chief = SimpleNamespace(extended=SimpleNamespace(should_save_summary=False))
    logger = kc.GradientNormLogger(tmp_path)
    logger.set_model(SimpleNamespace(distribute_strategy=not_chief))
    logger._train_writer.scalars(1, {"grad_norm/pre_clip": 1.0})
    logger._train_writer.close()
    assert list(tmp_path.iterdir()) == []


# --- The clusters ---------------------------------------------------------------------------


def run_cluster(args, out, single=False):
    """Runs a 2-worker cluster (and, if asked, the one-process reference alongside); returns the JSONs."""
    ports = mwms_cluster.free_ports(2)
    reference = None
    if single:
        (out / "single").mkdir()
        reference = mwms_cluster.start_single([args[0], str(out / "single"), *args[1:]], out)
    try:
        with mwms_cluster.Cluster([args[0], str(out), *args[1:]], ports, out) as cluster:
            codes = cluster.run()
            logs = [cluster.stderr(i) for i in range(2)]
        assert codes == [0, 0], logs
        if reference is not None:
            assert reference.wait(timeout=150) == 0, (out / "single.log").read_text()[-3000:]
    finally:
        if reference is not None and reference.poll() is None:
            os.killpg(reference.pid, signal.SIGKILL)
            reference.wait()
    assert not any(mwms_cluster.listening(port) for port in ports)
    suffix = f"_{args[1]}" if len(args) > 1 else ""
    results = {f"worker{i}": json.loads((out / f"worker{i}{suffix}.json").read_text()) for i in range(2)}
    if single:
        results["single"] = json.loads((out / "single" / "single.json").read_text())
    return results


def max_abs_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return run_cluster(["train"], tmp_path_factory.mktemp("mwms_train"), single=True)


@pytest.mark.slow
def test_both_workers_train_as_two_replicas(trained):
    for worker in ("worker0", "worker1"):
        assert trained[worker]["num_replicas_in_sync"] == 2
        assert set(trained[worker]["cases"]) == set(TRAIN_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", TRAIN_CASES)
def test_weights_equal_one_device(trained, case):
    single = trained["single"]["cases"][case]
    worker0, worker1 = (trained[w]["cases"][case] for w in ("worker0", "worker1"))
    assert worker0["weights"] == worker1["weights"]
    assert max_abs_diff(worker0["weights"], single["weights"]) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("case", TRAIN_CASES)
def test_logs_are_global_and_equal_on_both_workers(trained, case):
    single = trained["single"]["cases"][case]
    worker0, worker1 = (trained[w]["cases"][case] for w in ("worker0", "worker1"))
    assert worker0["batch_logs"] == worker1["batch_logs"] and worker0["history"] == worker1["history"]
    assert len(worker0["batch_logs"]) == len(single["batch_logs"]) == 16
    expected = {"loss", "mae", "val_loss", "val_mae"}
    if case in CLIPPING_CASES:
        expected |= {"grad_norm", "clipped_grad_norm", "nonfinite_steps"}
    assert set(worker0["history"]) == expected
    for got, want in zip(worker0["batch_logs"], single["batch_logs"]):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    for key in expected:
        assert worker0["history"][key] == pytest.approx(single["history"][key], rel=1e-5, abs=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("case", TRAIN_CASES)
def test_evaluate_and_predict_equal_one_device(trained, case):
    single = trained["single"]["cases"][case]
    for worker in ("worker0", "worker1"):
        got = trained[worker]["cases"][case]
        assert got["evaluate"] == pytest.approx(single["evaluate"], rel=1e-5)
        assert len(got["predict"]) == 128  # every worker gets every prediction, in input order
        assert np.max(np.abs(np.subtract(got["predict"], single["predict"]))) < 1e-5


@pytest.mark.slow
def test_one_gradient_all_reduce_per_step_as_keras(trained):
    """Each worker traces one step that makes one all-reduce carrying the 4 gradients, as the
    plain `keras.Model` (with the same override, no clipping) does."""
    for worker in ("worker0", "worker1"):
        cases = trained[worker]["cases"]
        assert cases["keras_no_clip"]["all_reduce_calls"] == [4]
        for case in CLIPPING_CASES:
            assert cases[case]["all_reduce_calls"] == [4], (worker, case)


@pytest.mark.slow
def test_scenario_exercises_clipping(trained):
    """Guard: the fixed bound clips nearly every step and the adaptive thresholds only some, so
    the adaptive state (identical on both workers) decides the result."""
    for case in CLIPPING_CASES:
        logs = trained["single"]["cases"][case]["batch_logs"]
        clipped = sum(step["clipped_grad_norm"] < step["grad_norm"] * (1 - 1e-6) for step in logs)
        assert (0 < clipped < len(logs)) if case in ADAPTIVE_CASES else clipped >= len(logs) - 2, (case, clipped)


def read_scalars(run_dir):
    accumulator = plugin_event_accumulator.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in accumulator.Tensors(tag)]
        for tag in accumulator.Tags()["tensors"]
        if tag.startswith(("grad_norm", "clipping"))
    }


@pytest.mark.slow
def test_gradient_norm_logger_writes_from_the_chief_only(trained):
    run_dir = Path(trained["worker0"]["cases"]["functional_autoclip"]["log_dir"]) / "train"
    files = sorted(p.name for p in run_dir.iterdir())
    assert len(files) == 1, files  # both workers were given this log_dir
    assert files[0].split(".")[-2] == str(trained["worker0"]["pid"]), files  # the chief's
    ours = read_scalars(run_dir)
    single = read_scalars(Path(trained["single"]["cases"]["functional_autoclip"]["log_dir"]) / "train")
    assert {"grad_norm/pre_clip", "grad_norm/post_clip", "grad_norm/threshold"} <= set(single)
    assert set(ours) == set(single)
    for tag, curve in single.items():
        assert [step for step, _ in ours[tag]] == [step for step, _ in curve] == list(range(1, 17)), tag
        assert [value for _, value in ours[tag]] == pytest.approx([value for _, value in curve], rel=1e-5, abs=1e-7)


# --- Plain Keras ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return {
        scenario: run_cluster([scenario], tmp_path_factory.mktemp(scenario))
        for scenario in ("plain", "plain_build_fixed")
    }


@pytest.mark.slow
def test_plain_keras_fails_under_multi_worker(plain):
    """Keras's own failure (keras-team/keras#20585). When this test fails, upstream has changed:
    re-check whether keras_clip/training/multiworker.py is still needed."""
    for worker in ("worker0", "worker1"):
        result = plain["plain"][worker]
        assert result["error"] is not None, f"plain keras.Model now trains under MWMS; see {UPSTREAM}"
        assert result["error"].startswith("ValueError: Attempt to convert a value (PerReplica:"), result["error"]
        assert "_maybe_symbolic_build" in result["frames"]


@pytest.mark.slow
def test_plain_keras_fails_on_the_scalar_log_reduction_next(plain):
    """With only the first path overridden, Keras fails on the second: the mean over axis 0 of scalar logs."""
    for worker in ("worker0", "worker1"):
        result = plain["plain_build_fixed"][worker]
        assert result["error"] is not None, f"Keras now reduces scalar logs under MWMS; see {UPSTREAM}"
        assert "Invalid reduction dimension 0 for input with 0 dimensions" in result["error"], result["error"]
        assert "reduce_per_replica" in result["frames"]


# --- Faults -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Worker 1 is killed mid-epoch (SIGKILL); both are restarted on the same ports; an
    uninterrupted cluster runs the same training for reference."""
    out = tmp_path_factory.mktemp("mwms_faults")
    ports = mwms_cluster.free_ports(2)
    with mwms_cluster.Cluster(["backup", str(out), "interrupted"], ports, out / "interrupted") as cluster:
        cluster.wait_for_line(1, "KILL_ME")  # epoch 2 of 3, after its 4th batch
        cluster.kill(1)
        survivor = cluster.wait(0)
        survivor_log = cluster.stderr(0)
    assert not any(mwms_cluster.listening(port) for port in ports)
    results = {"survivor": survivor, "survivor_log": survivor_log}
    for phase in ("resumed", "uninterrupted"):
        results[phase] = run_cluster(["backup", phase], out)
    return results


@pytest.mark.slow
def test_survivor_fails_instead_of_hanging(faults):
    assert faults["survivor"] not in (None, 0), faults["survivor_log"]  # None: killed at the deadline
    assert "unhealthy" in faults["survivor_log"] or "Collective ops is aborted" in faults["survivor_log"]


@pytest.mark.slow
def test_restart_resumes_from_the_last_backup(faults):
    for worker in ("worker0", "worker1"):
        resumed, uninterrupted = faults["resumed"][worker], faults["uninterrupted"][worker]
        assert resumed["restored_iterations"] == 8  # the backup of epoch 1's end: 8 steps
        assert len(resumed["history"]["loss"]) == 2  # epochs 2 and 3 only
        assert resumed["restored_state"] == uninterrupted["epoch_end_states"]["0"]  # the AutoClip history too
        history, count = resumed["restored_state"]
        assert count == 8 and np.count_nonzero(history) == 8  # guard: AutoClip's state holds epoch 1's 8 norms


@pytest.mark.slow
def test_restarted_run_ends_as_the_uninterrupted_one(faults):
    for worker in ("worker0", "worker1"):
        resumed, uninterrupted = faults["resumed"][worker], faults["uninterrupted"][worker]
        assert max_abs_diff(resumed["weights"], uninterrupted["weights"]) < 1e-6
        assert resumed["clip_state"] == uninterrupted["clip_state"]
        assert resumed["history"]["loss"] == pytest.approx(uninterrupted["history"]["loss"][1:], rel=1e-6)
        # Guard: after the backup, the adaptive threshold clips some steps (so its state matters).
        after = uninterrupted["batch_logs"][8:]
        assert any(step["clipped_grad_norm"] < step["grad_norm"] * (1 - 1e-6) for step in after)


# --- The documented launch --------------------------------------------------------------------


@pytest.mark.slow
def test_documented_commands_train_two_workers(tmp_path):
    script, commands = documented_launch("Launching two workers")
    assert "127.0.0.1:12345" in commands and "127.0.0.1:12346" in commands and "python train.py" in commands
    (tmp_path / "train.py").write_text(script)
    ports = mwms_cluster.free_ports(2)
    commands = commands.replace("12345", str(ports[0])).replace("12346", str(ports[1]))
    env = mwms_cluster.worker_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    shell = subprocess.Popen(["bash", "-c", commands], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = shell.communicate(timeout=150)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)  # the shell and both workers
            shell.communicate()
    assert not any(mwms_cluster.listening(port) for port in ports)
    lines = sorted(line for line in out.splitlines() if line.startswith("worker "))
    assert [line.split(":")[0] for line in lines] == ["worker 0", "worker 1"], err[-3000:]
    assert lines[0].split(":")[1] == lines[1].split(":")[1]  # the same global figures
    assert len(list((tmp_path / "runs" / "mwms" / "train").iterdir())) == 1  # the chief's event file
    assert not (tmp_path / "backup" / "worker0").exists()  # BackupAndRestore cleans up after a finished fit

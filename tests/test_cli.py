"""The `keras-clip` command: help, argument errors, the demo and the sweep end to end."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from PIL import Image

import keras_clip.cli
from keras_clip.cli import main

SUBCOMMANDS = [[], ["demo"], ["lr-sweep"]]


def _valid_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        return image.size


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: keras-clip")
    return err


def test_console_script_is_main():
    (script,) = metadata.entry_points(group="console_scripts", name="keras-clip")
    assert script.load() is main


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=["top", "demo", "lr-sweep"])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as raised:
        main([*command, "--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: keras-clip")
    for flag in ([] if not command else ["--logdir", "--epochs", "--seed"]):
        assert flag in out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["train"], "invalid choice: 'train'"),
        (["demo", "--epochs", "0"], "argument --epochs: expected a positive integer. Received: '0'"),
        (["demo", "--epochs", "ten"], "argument --epochs: expected a positive integer. Received: 'ten'"),
        (["demo", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
        (["demo", "--learning-rates", "0.1"], "unrecognized arguments: --learning-rates"),
        (["lr-sweep", "--lrs", "0.1,fast"], "argument --learning-rates/--lrs: expected a positive number"),
        (["lr-sweep", "--lrs", "-0.1"], "expected a positive finite number. Received: '-0.1'"),
        (["lr-sweep", "--lrs", ","], "expected comma-separated positive numbers"),
        (["lr-sweep", "--max-norms", "inf"], "argument --max-norms: expected a positive finite number"),
        (["lr-sweep", "--momentum", "1"], "argument --momentum: expected a number in [0, 1). Received: '1'"),
    ],
)
def test_bad_arguments(capsys, argv, message):
    assert message in _usage_error(capsys, argv)


@pytest.mark.parametrize("command", ["demo", "lr-sweep"])
def test_unwritable_logdir_fails_before_training(capsys, monkeypatch, tmp_path, command):
    def no_training(name):
        raise AssertionError("training started although --logdir is not writable")

    monkeypatch.setattr(keras_clip.cli, "_command", no_training)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    err = _usage_error(capsys, [command, "--logdir", str(blocker / "runs")])
    assert f"argument --logdir: cannot write to {str(blocker / 'runs')!r}" in err


def test_missing_matplotlib_is_a_usage_error(capsys, monkeypatch, tmp_path):
    real_find_spec = keras_clip.cli.importlib.util.find_spec
    monkeypatch.setattr(
        keras_clip.cli.importlib.util, "find_spec", lambda name: None if name == "matplotlib" else real_find_spec(name)
    )
    monkeypatch.setattr(keras_clip.cli, "_command", lambda name: pytest.fail("training started"))
    assert "the figures need matplotlib" in _usage_error(capsys, ["demo", "--logdir", str(tmp_path)])


def test_demo_end_to_end(tmp_path):
    logdir = tmp_path / "demo"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "keras_clip", "demo", "--logdir", str(logdir), "--epochs", "20"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| run " in out and "| outcome" in out
    assert out.rstrip().splitlines()[-1].endswith(f"tensorboard --logdir {logdir}")

    results = {r["run"]: r for r in json.loads((logdir / "results.json").read_text())}
    outcomes = {name: r["outcome"] for name, r in results.items()}
    assert outcomes == {
        "seed/none": "diverged",
        "seed/value": "converged",
        "seed/global-norm": "converged",
        "seed/agc": "converged",
        "rnn/none": "diverged",
        "rnn/global-norm": "converged",
    }
    assert results["seed/none"]["nonfinite_steps"] > 0 and results["rnn/none"]["nonfinite_steps"] > 0
    assert results["seed/none"]["steps_clipped"] == 0
    assert results["seed/global-norm"]["steps_clipped"] > 0
    for name, result in results.items():
        assert f"| {name} " in out
        assert result["steps"] == (160 if name.startswith("seed") else 320)
        assert list((logdir / name / "train").glob("events.out.tfevents.*")), name
    assert _valid_png(logdir / "demo.png")[0] > 800


def test_lr_sweep_small(tmp_path, capsys):
    logdir = tmp_path / "sweep"
    argv = ["lr-sweep", "--logdir", str(logdir), "--epochs", "3", "--lrs", "0.3,0.001", "--max-norms", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| learning rate | none" in out and "ClipByGlobalNorm(1)" in out
    assert "none: largest stable learning rate 0.001; diverged at: 0.3." in out
    assert "ClipByGlobalNorm(1): largest stable learning rate 0.3; diverged at: none." in out
    runs = json.loads((logdir / "results.json").read_text())
    outcome = {(r["learning_rate"], r["clipping"]): r["outcome"] for r in runs}
    assert outcome[(0.3, "none")] == "diverged"
    assert outcome[(0.001, "none")] != "diverged"
    assert outcome[(0.3, "ClipByGlobalNorm(1)")] != "diverged"
    assert _valid_png(logdir / "lr_sweep.png")[0] > 300

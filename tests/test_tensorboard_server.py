"""The real `tensorboard` server finds and serves what GradientNormLogger wrote."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import keras
import pytest

import keras_clip as kc

pytestmark = pytest.mark.slow  # a TensorBoard server process

STARTUP_TIMEOUT = 90.0  # seconds; the machine is shared


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(base, path, **query):
    url = base + path + ("?" + urllib.parse.urlencode(query) if query else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory, small_data):
    keras.utils.set_random_seed(0)
    x, y = small_data
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    model = kc.ClippingModel(inputs, keras.layers.Dense(1, name="out")(hidden))
    model.compile(optimizer="sgd", loss="mse", clipping=kc.ClipByGlobalNorm(1.0), steps_per_execution=4)
    path = tmp_path_factory.mktemp("tb_logs")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[kc.GradientNormLogger(path)])
    return str(path)


@pytest.fixture(scope="module")
def server(log_dir, tmp_path_factory):
    """Yields the base URL of a TensorBoard serving `log_dir`; always stops it."""
    port = free_port()
    output = open(tmp_path_factory.mktemp("tb_server") / "output.txt", "w+")
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", log_dir, "--port", str(port)]
    command += ["--host", "127.0.0.1", "--load_fast", "false", "--reload_interval", "1"]
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_tag(process, base, output)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        output.close()


def wait_for_tag(process, base, output):
    """Polls the scalars API until it lists `grad_norm/pre_clip` (bounded)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.seek(0)
            pytest.fail(f"tensorboard exited with {process.returncode}:\n{output.read()}")
        try:
            if "grad_norm/pre_clip" in get_json(base, "/data/plugin/scalars/tags").get("train", {}):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    output.seek(0)
    pytest.fail(f"tensorboard did not serve grad_norm/pre_clip within {STARTUP_TIMEOUT}s:\n{output.read()}")


def test_scalars_api_serves_every_step(server):
    tags = get_json(server, "/data/plugin/scalars/tags")["train"]
    assert {"grad_norm/pre_clip", "grad_norm/post_clip", "grad_norm/threshold"} <= set(tags)
    points = get_json(server, "/data/plugin/scalars/scalars", tag="grad_norm/pre_clip", run="train")
    assert [step for _, step, _ in points] == list(range(1, 17))  # 64 samples / 8 per batch, 2 epochs
    post = get_json(server, "/data/plugin/scalars/scalars", tag="grad_norm/post_clip", run="train")
    for (_, _, pre_value), (_, _, post_value) in zip(points, post):
        assert pre_value > 0 and post_value <= min(pre_value, 1.0) * (1 + 1e-6)


def test_custom_scalars_layout_is_served(server):
    served = get_json(server, "/data/plugin/custom_scalars/layout")
    charts = [chart for category in served["category"] for chart in category["chart"]]
    assert {"tag": ["^grad_norm/pre_clip$", "^grad_norm/post_clip$", "^grad_norm/threshold$"]} in [
        chart.get("multiline") for chart in charts
    ]

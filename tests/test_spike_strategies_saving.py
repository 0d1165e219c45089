"""AdaGC, SkipSpikes and ZClip's skipping: state and skip counter survive save/load and checkpoints."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip as kc
from tests.helpers import assert_same_run, save_load_and_go_on, tiny_clipping_model
from tests.helpers import fit_quietly as fit

STATEFUL = {
    "chain": lambda: kc.Chain(
        kc.SkipSpikes(3.0, window=8, warmup_steps=3),
        kc.AdaGC(warmup_steps=3, absolute=5.0),
        kc.ZClip(warmup_steps=3, max_norm=None, mode="percentile", skip_update_on_spike=True),
    ),
    "by_variable": lambda: kc.ByVariable(
        {"hidden/*": kc.AdaGC(warmup_steps=2)},
        default=kc.Chain(kc.SkipSpikes(3.0, window=8, warmup_steps=3), kc.ClipByBlockRMS(0.5)),
    ),
}


@pytest.fixture(scope="module")
def data(small_data):
    """The small problem with one batch in four (the last of each epoch) poisoned: finite, huge."""
    x, y = (a.copy() for a in small_data)
    y[48:] *= 200.0
    return x, y


def tiny_model(clipping, seed=0):
    return tiny_clipping_model(clipping, keras.optimizers.Adam(0.01), seed=seed)


@pytest.fixture(scope="module")
def uninterrupted(data):
    runs = {}
    for name, make in STATEFUL.items():
        model = tiny_model(make())
        runs[name] = (model, fit(model, data, 4))
    return runs


def test_state_is_nontrivial_so_resume_tests_mean_something(uninterrupted):
    model, history = uninterrupted["chain"]
    assert history["skipped_steps"][-1] >= 3  # the poisoned batch, once per epoch after warm-up
    _, skip_count, gamma, adagc_count, zclip_count, _, zclip_var = (v.numpy() for v in model.clipping.variables)
    assert adagc_count == skip_count == zclip_count == 16 - history["skipped_steps"][-1]  # skips leave no state
    assert np.all(gamma > 0) and zclip_var > 0
    _, history = uninterrupted["by_variable"]
    assert history["skipped_steps"][-1] >= 3


@pytest.mark.parametrize("name", list(STATEFUL))
def test_save_load_restores_state_and_continues_bit_identically(name, data, uninterrupted, tmp_path):
    model = tiny_model(STATEFUL[name]())
    fit(model, data, 2)
    loaded, history = save_load_and_go_on(model, data, 2, tmp_path)
    assert history["skipped_steps"][-1] == uninterrupted[name][1]["skipped_steps"][-1]
    assert_same_run(loaded, uninterrupted[name][0])


@pytest.mark.parametrize("name", list(STATEFUL))
def test_tf_train_checkpoint_resume_is_bit_identical(name, data, uninterrupted, tmp_path):
    model = tiny_model(STATEFUL[name]())
    fit(model, data, 2)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    resumed = tiny_model(STATEFUL[name](), seed=7)
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.make_train_function()
    tf.train.Checkpoint(model=resumed).restore(path).assert_consumed()
    fit(resumed, data, 2)
    assert_same_run(resumed, uninterrupted[name][0])


@pytest.mark.parametrize("name", list(STATEFUL))
def test_a_nonfinite_step_in_a_model_changes_no_state(name, small_data):
    x, y = (a.copy() for a in small_data)
    x[20] = np.nan  # the second batch of each epoch
    model = tiny_model(STATEFUL[name]())
    history = fit(model, (x, y), 1)
    assert history["nonfinite_steps"] == [1] and history["skipped_steps"] == [0]
    counters = [int(v.numpy()) for v in model.clipping.variables if v.dtype == "int64"]
    assert len(counters) >= 2 and all(c == 3 for c in counters), counters

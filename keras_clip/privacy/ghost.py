"""Ghost norms: each example's gradient norm for a layer from its inputs and output gradients.

For a Dense layer z = a W + b, example i's kernel gradient is a_i^T g_i with
g_i = dL_i/dz_i, so its squared norm is |a_i|^2 |g_i|^2 for one position
per example, or the sum of (a_i a_i^T) * (g_i g_i^T) over positions, and no
per-example gradient is ever formed. Embedding rows, LayerNormalization's
scale and offset, and EinsumDense kernels (by one einsum) work the same way.
The layers' calls are re-run with a zero "probe" added to their outputs
(before the activation), so one backward pass of the summed loss gives every
g_i; layers called more than once per step fall back to vectorized
per-example gradients. The clipped sum is then formed from the same a_i and
g_i (for Dense, a^T (c * g) with c the examples' clip factors), without a
second backward pass ("book-keeping", Bu et al. 2022).

References:
    - Goodfellow, [Efficient Per-Example Gradient Computations](https://arxiv.org/abs/1510.01799), 2015.
    - Li et al., [Large Language Models Can Be Strong Differentially Private
      Learners](https://arxiv.org/abs/2110.05679), 2022 (ghost clipping).
    - Bu et al., [Differentially Private Optimization on Large Model at Small
      Cost](https://arxiv.org/abs/2210.00038), 2022 (book-keeping).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Callable, Iterator

import keras
import tensorflow as tf

_ACTIVE = threading.local()  # the recording of this thread (each replica traces in its own thread)
_LOCK = threading.Lock()
_PATCHES: dict[int, int] = {}  # id(layer) -> recordings using its patched call


@dataclasses.dataclass
class Record:
    """One call of a supported layer: what its ghost norm needs."""

    layer: keras.layers.Layer
    inputs: tf.Tensor
    probe: tf.Tensor
    extra: Any = None


class Recording:
    """Collects the supported layers' calls while the model runs forward (one thread's step)."""

    def __init__(self, tape: tf.GradientTape) -> None:
        self.tape = tape
        self.calls: list[Record] = []

    def probe(self, layer: keras.layers.Layer, inputs: tf.Tensor, outputs: tf.Tensor, extra: Any = None) -> tf.Tensor:
        """Adds a watched zero to a layer's outputs; its gradient is each example's output gradient."""
        probe = tf.zeros_like(outputs)
        self.tape.watch(probe)
        self.calls.append(Record(layer, inputs, probe, extra))
        return outputs + probe

    def records(self) -> list[Record]:
        """The calls of layers called exactly once (their variables' norms come from here)."""
        counts: dict[int, int] = {}
        for record in self.calls:
            counts[id(record.layer)] = counts.get(id(record.layer), 0) + 1
        return [r for r in self.calls if counts[id(r.layer)] == 1]

    def clipped_sums(self, records: list[Record], output_grads: list[tf.Tensor], factors: tf.Tensor) -> dict[int, Any]:
        """Each recorded variable's sum over examples of its clip-weighted gradient, by `id(variable)`.

        From the same inputs and output gradients as the norms (one matmul
        or einsum per layer; no second backward pass).
        """
        sums: dict[int, Any] = {}
        for record, g in zip(records, output_grads):
            g = tf.cast(g, tf.float32)
            weighted = g * tf.reshape(factors, [-1] + [1] * (g.shape.rank - 1))
            for variable, grad in _SUMS[type(record.layer)](record, weighted):
                sums[id(variable)] = grad
        return sums

    def squared_norms(self, records: list[Record], output_grads: list[tf.Tensor]) -> tf.Tensor:
        """Sum over the recorded layers of each example's squared gradient norm."""
        total = 0.0
        for record, g in zip(records, output_grads):
            total += _NORMS[type(record.layer)](record, tf.cast(g, tf.float32))
        return total


def supported(layer: keras.layers.Layer) -> bool:
    """Whether ghost norms cover this layer (exact class, trainable, plain float weights)."""
    kind = type(layer)
    if kind not in _CALLS or not layer.trainable or not layer.built or not layer.trainable_weights:
        return False
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return False
    if kind is keras.layers.LayerNormalization and layer.rms_scaling:
        return False
    if kind is keras.layers.EinsumDense:
        return _einsum_specs(layer) is not None
    return True


@contextlib.contextmanager
def recording(model: keras.Model, tape: tf.GradientTape) -> Iterator[Recording]:
    """Records the supported layers' calls made by this thread inside the block."""
    layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True) if supported(layer)]
    rec = Recording(tape)
    with _LOCK:
        for layer in layers:
            if _PATCHES.get(id(layer), 0) == 0:
                object.__setattr__(layer, "call", _patched_call(layer))
            _PATCHES[id(layer)] = _PATCHES.get(id(layer), 0) + 1
    _ACTIVE.recording = rec
    try:
        yield rec
    finally:
        _ACTIVE.recording = None
        with _LOCK:
            for layer in layers:
                _PATCHES[id(layer)] -= 1
                if _PATCHES[id(layer)] == 0:
                    del _PATCHES[id(layer)]
                    object.__delattr__(layer, "call")


def _patched_call(layer: keras.layers.Layer) -> Callable[..., Any]:
    ghost_call = _CALLS[type(layer)]

    def call(*args: Any, **kwargs: Any) -> Any:
        rec = getattr(_ACTIVE, "recording", None)
        if rec is None:  # another thread's recording, or none: the layer's own call
            return type(layer).call(layer, *args, **kwargs)
        return ghost_call(layer, rec, *args, **kwargs)

    return call


# The layers' calls, re-written with the probe before the activation.


def _dense_call(layer: Any, rec: Recording, inputs: Any, training: Any = None) -> Any:
    z = keras.ops.matmul(inputs, layer.kernel)
    if layer.bias is not None:
        z = keras.ops.add(z, layer.bias)
    z = rec.probe(layer, inputs, z)
    return layer.activation(z) if layer.activation is not None else z


def _einsum_call(layer: Any, rec: Recording, inputs: Any, training: Any = None) -> Any:
    z = keras.ops.einsum(layer.equation, inputs, layer.kernel)
    if layer.bias is not None:
        z = keras.ops.add(z, layer.bias)
    z = rec.probe(layer, inputs, z)
    return layer.activation(z) if layer.activation is not None else z


def _embedding_call(layer: Any, rec: Recording, inputs: Any) -> Any:
    ids = inputs if keras.backend.standardize_dtype(inputs.dtype) in ("int32", "int64") else tf.cast(inputs, "int32")
    outputs = rec.probe(layer, ids, keras.ops.take(layer.embeddings, ids, axis=0))
    return keras.ops.cast(outputs, layer.compute_dtype)


def _layer_norm_call(layer: Any, rec: Recording, inputs: Any) -> Any:
    x = tf.cast(inputs, tf.float32)
    normalized = keras.ops.layer_normalization(x, None, None, layer.axis, layer.epsilon)
    z = normalized
    if layer.gamma is not None:
        z = z * _broadcast(layer, layer.gamma, x)
    if layer.beta is not None:
        z = z + _broadcast(layer, layer.beta, x)
    return keras.ops.cast(rec.probe(layer, inputs, z, extra=normalized), layer.compute_dtype)


def _broadcast(layer: Any, weight: Any, x: tf.Tensor) -> tf.Tensor:
    shape = [1] * x.shape.rank
    for axis in _param_axes(layer, x.shape.rank):
        shape[axis] = x.shape[axis]
    return tf.reshape(tf.cast(weight, tf.float32), shape)


def _param_axes(layer: Any, rank: int) -> list[int]:
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    return sorted(a % rank for a in axes)


# Each layer's per-example squared gradient norms, shape (batch,).


def _dense_norms(record: Record, g: tf.Tensor) -> tf.Tensor:
    a = tf.cast(record.inputs, tf.float32)
    batch = tf.shape(a)[0]
    if a.shape.rank == 2:
        kernel = tf.reduce_sum(tf.square(a), 1) * tf.reduce_sum(tf.square(g), 1)
        return kernel + (tf.reduce_sum(tf.square(g), 1) if record.layer.bias is not None else 0.0)
    a = tf.reshape(a, [batch, -1, a.shape[-1]])
    g = tf.reshape(g, [batch, -1, g.shape[-1]])
    positions = a.shape[1]
    if positions is not None and positions * positions <= a.shape[-1] * g.shape[-1]:
        gram = tf.einsum("bti,bsi->bts", a, a) * tf.einsum("bto,bso->bts", g, g)
        kernel = tf.reduce_sum(gram, [1, 2])
    else:
        kernel = tf.reduce_sum(tf.square(tf.einsum("bti,bto->bio", a, g)), [1, 2])
    if record.layer.bias is None:
        return kernel
    return kernel + tf.reduce_sum(tf.square(tf.reduce_sum(g, 1)), 1)


def _embedding_norms(record: Record, g: tf.Tensor) -> tf.Tensor:
    ids = record.inputs
    batch = tf.shape(g)[0]
    if ids.shape.rank == 1:
        return tf.reduce_sum(tf.square(g), 1)
    ids = tf.reshape(ids, [batch, -1])
    g = tf.reshape(g, [batch, -1, g.shape[-1]])
    same_row = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), tf.float32)
    return tf.reduce_sum(same_row * tf.einsum("btd,bsd->bts", g, g), [1, 2])


def _layer_norm_norms(record: Record, g: tf.Tensor) -> tf.Tensor:
    layer = record.layer
    rank = g.shape.rank
    summed = [a for a in range(1, rank) if a not in _param_axes(layer, rank)]
    total = 0.0
    if layer.gamma is not None:
        total += _sum_but_batch(tf.square(tf.reduce_sum(g * record.extra, summed)))
    if layer.beta is not None:
        total += _sum_but_batch(tf.square(tf.reduce_sum(g, summed)))
    return total


def _einsum_specs(layer: Any) -> tuple[str, str, str] | None:
    """`(inputs, kernel, outputs)` letters of an EinsumDense equation with a leading batch letter, else None."""
    equation = layer.equation.replace(" ", "")
    if "..." in equation or "->" not in equation:
        return None
    operands, outputs = equation.split("->")
    inputs, kernel = operands.split(",")
    if not inputs or not outputs or inputs[0] != outputs[0] or inputs[0] in kernel:
        return None
    return inputs, kernel, outputs


def _einsum_norms(record: Record, g: tf.Tensor) -> tf.Tensor:
    layer = record.layer
    inputs, kernel, outputs = _einsum_specs(layer)
    batch = inputs[0]
    a = tf.cast(record.inputs, tf.float32)
    per_example = tf.einsum(f"{inputs},{outputs}->{batch}{kernel}", a, g)
    total = _sum_but_batch(tf.square(per_example))
    if layer.bias is not None:
        bias_letters = "".join(c for c in outputs if c in layer.bias_axes)
        total += _sum_but_batch(tf.square(tf.einsum(f"{outputs}->{batch}{bias_letters}", g)))
    return total


def _sum_but_batch(values: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.reshape(values, [tf.shape(values)[0], -1]), 1)


# Each layer's (variable, clip-weighted gradient summed over the batch) pairs, from weighted output gradients.


def _dense_sums(record: Record, g: tf.Tensor) -> list[tuple[Any, Any]]:
    layer = record.layer
    a = tf.reshape(tf.cast(record.inputs, tf.float32), [-1, record.inputs.shape[-1]])
    g = tf.reshape(g, [-1, g.shape[-1]])
    sums = [(layer.kernel, tf.matmul(a, g, transpose_a=True))]
    if layer.bias is not None:
        sums.append((layer.bias, tf.reduce_sum(g, 0)))
    return sums


def _embedding_sums(record: Record, g: tf.Tensor) -> list[tuple[Any, Any]]:
    table = record.layer.embeddings
    rows = tf.IndexedSlices(tf.reshape(g, [-1, g.shape[-1]]), tf.reshape(record.inputs, [-1]), tf.shape(table))
    return [(table, rows)]


def _layer_norm_sums(record: Record, g: tf.Tensor) -> list[tuple[Any, Any]]:
    layer = record.layer
    summed = [a for a in range(g.shape.rank) if a not in _param_axes(layer, g.shape.rank)]
    sums = []
    if layer.gamma is not None:
        sums.append((layer.gamma, tf.reshape(tf.reduce_sum(g * record.extra, summed), layer.gamma.shape)))
    if layer.beta is not None:
        sums.append((layer.beta, tf.reshape(tf.reduce_sum(g, summed), layer.beta.shape)))
    return sums


def _einsum_sums(record: Record, g: tf.Tensor) -> list[tuple[Any, Any]]:
    layer = record.layer
    inputs, kernel, outputs = _einsum_specs(layer)
    sums = [(layer.kernel, tf.einsum(f"{inputs},{outputs}->{kernel}", tf.cast(record.inputs, tf.float32), g))]
    if layer.bias is not None:
        bias_letters = "".join(c for c in outputs if c in layer.bias_axes)
        sums.append((layer.bias, tf.reshape(tf.einsum(f"{outputs}->{bias_letters}", g), layer.bias.shape)))
    return sums


_SUMS: dict[type, Callable[[Record, tf.Tensor], list[tuple[Any, Any]]]] = {
    keras.layers.Dense: _dense_sums,
    keras.layers.EinsumDense: _einsum_sums,
    keras.layers.Embedding: _embedding_sums,
    keras.layers.LayerNormalization: _layer_norm_sums,
}
_CALLS: dict[type, Callable[..., Any]] = {
    keras.layers.Dense: _dense_call,
    keras.layers.EinsumDense: _einsum_call,
    keras.layers.Embedding: _embedding_call,
    keras.layers.LayerNormalization: _layer_norm_call,
}
_NORMS: dict[type, Callable[[Record, tf.Tensor], tf.Tensor]] = {
    keras.layers.Dense: _dense_norms,
    keras.layers.EinsumDense: _einsum_norms,
    keras.layers.Embedding: _embedding_norms,
    keras.layers.LayerNormalization: _layer_norm_norms,
}

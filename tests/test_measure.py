"""The measures of images from anywhere (collapse_jax.measure), against direct computations."""
import numpy as np
import pytest

from collapse_jax import measure


def test_copy_threshold_is_a_third_of_the_real_median_nearest_distance():
    rng = np.random.default_rng(0)
    train, held = (rng.integers(0, 256, (n, 6, 6, 1), np.uint8) for n in (50, 31))
    a, b = (x.reshape(len(x), -1).astype(np.float64) for x in (held, train))
    nearest = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)
    assert measure.copy_threshold(train, held) == pytest.approx(np.median(nearest) / 3, rel=1e-6)
    assert measure.copy_threshold(train, held, 0.5) == pytest.approx(np.median(nearest) / 2,
                                                                     rel=1e-6)
    # and the calibrated share counts exactly the samples nearer than it
    gen = np.concatenate([train[:5], held[:10]])  # 5 exact copies, 10 fresh
    px = measure.pixel_measures(train, gen, copy_threshold=measure.copy_threshold(train, held))
    g = gen.reshape(len(gen), -1).astype(np.float64)
    d1 = np.sqrt(((g[:, None] - b[None]) ** 2).sum(-1)).min(1)
    assert px['memorization_calibrated'] == pytest.approx(np.mean(d1 < np.median(nearest) / 3))
    assert px['memorization_calibrated'] >= 5 / 15

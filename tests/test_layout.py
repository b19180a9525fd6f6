"""The run directory: what a resumed run reads, and what it says when a file is damaged."""
import numpy as np
import pytest

from collapse_jax import layout


def test_a_damaged_pool_or_training_set_names_the_file_and_how_to_redo_it(tmp_path):
    gd = layout.RunDir(str(tmp_path)).gen(1)
    pool = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)
    gd.save_pool(pool, None, dict(train_s=1.0))
    gd.save_train_set(layout.TrainSet(pool, None, np.zeros(2, np.int16), np.arange(2), {}))
    np.testing.assert_array_equal(gd.load_pool()[0], pool)
    for name, redo in (('pool.npy', 'generation 1 is sampled again from its final checkpoint'),
                       ('train_images.npy', "the previous generation's selection makes it")):
        path = tmp_path / 'gen_001' / name
        path.write_bytes(path.read_bytes()[:100])
        with pytest.raises(ValueError) as e:
            gd.load_pool() if name == 'pool.npy' else gd.load_train_set()
        msg = str(e.value)
        assert '\n' not in msg and str(path) in msg and 'not a readable .npy' in msg
        assert redo in msg

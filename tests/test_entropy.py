"""The entropy intervention: the law P_K, and one tiny run through the whole mode."""
import os

import numpy as np
import pytest

from collapse_jax import entropy, knn_entropy, plan
from helpers import tiny


def test_draws_are_shifted_and_scaled_parents_and_fewer_parents_mean_less_entropy():
    rng = np.random.default_rng(0)
    parents = rng.integers(0, 200, (5, 8, 8, 1), dtype=np.uint8)
    same = entropy.draw(parents, 40, np.random.default_rng(1), shift=0, scale=0.0)
    assert all(any(np.array_equal(x, p) for p in parents) for x in same)
    shifted = entropy.draw(parents, 40, np.random.default_rng(1), shift=1, scale=0.0)
    pad = np.pad(parents, ((0, 0), (1, 1), (1, 1), (0, 0)))
    views = [pad[:, 1 - y:9 - y, 1 - x:9 - x] for y in (-1, 0, 1) for x in (-1, 0, 1)]
    assert all(any(np.array_equal(x, v[i]) for v in views for i in range(5)) for x in shifted)
    scaled = entropy.draw(parents[:1], 200, np.random.default_rng(2), shift=0, scale=0.1)
    ratio = scaled.reshape(200, -1).sum(1) / parents[0].sum()
    assert 0.89 < ratio.min() < 0.95 and 1.05 < ratio.max() < 1.11
    big = np.random.default_rng(3).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    h = [knn_entropy(entropy.draw(big[:k], 256, np.random.default_rng(4), 2, 0.1)
                     .reshape(256, -1).astype(np.float64)) for k in (4, 64)]
    assert h[0] < h[1] - 50


def toy(parents='4,0'):
    import ml_collections
    cfg = tiny(generations=1)
    cfg.score.update(eval_n=32, fd_n=32)
    cfg.entropy = ml_collections.ConfigDict(dict(parents=parents, seeds='0', heldout_n=32,
                                                 shift=1, scale=0.1))
    return cfg


def test_a_bad_entropy_section_names_its_field():
    for field, value, words in (('parents', '4,x', 'entropy.parents='),
                                ('shift', 4, 'entropy.shift=4'), ('scale', 1.0, 'entropy.scale=1.0')):
        cfg = toy()
        cfg.entropy[field] = value
        with pytest.raises(ValueError, match=words):
            plan.entropy_plan(cfg)


@pytest.mark.slow
def test_one_tiny_run_measures_each_cell_against_its_own_law_and_resumes(tmp_path, engine,
                                                                        monkeypatch):
    from collapse_jax import loop, scoring
    cfg = toy()

    class Preempted(loop.Preemption):  # SIGTERM before the first cell's first step
        def __enter__(self):
            super().__enter__()
            self.flag = True
            return self
    with monkeypatch.context() as m:
        m.setattr(loop, 'Preemption', Preempted)
        with pytest.raises(loop.Stopped, match='stopped by SIGTERM in cell K=4 seed=0'):
            entropy.run_entropy(cfg, str(tmp_path), engine)
    assert (tmp_path / 'K4_seed0' / 'gen_000' / 'ckpt').exists()  # saved, and no cell yet
    assert not (tmp_path / 'K4_seed0' / 'cell.json').exists()
    res = entropy.run_entropy(cfg, str(tmp_path), engine)  # the same command resumes
    rows = {r['parents']: r for r in res['rows']}
    assert set(rows) == {4, 'plain real digits'}
    k4 = tmp_path / 'K4_seed0' / 'gen_000'
    d, h = np.load(k4 / 'train_images.npy'), np.load(k4 / 'heldout.npy')
    assert len(d) == 16 and len(h) == 32 and len(scoring.unique_rows(d)) <= 16
    assert rows[4]['train_entropy'] < rows['plain real digits']['train_entropy']
    sample = np.load(k4 / 'eval.npy')
    want = scoring.copy_statistics(scoring.nearest_train(sample.reshape(32, -1),
                                                         d.reshape(16, -1))[1],
                                   scoring.nearest_train(h.reshape(32, -1), d.reshape(16, -1))[1])
    assert rows[4]['copy_auc'] == pytest.approx(want['copy_auc'])
    assert rows[4]['copy_threshold'] == rows['plain real digits']['copy_threshold']
    assert os.path.getsize(tmp_path / 'figures' / 'entropy.png') > 0
    monkeypatch.setattr(type(engine), 'train', lambda *a, **k: pytest.fail('retrained'))
    assert entropy.run_entropy(cfg, str(tmp_path), engine)['rows'] == res['rows']

"""The rule and paradigm registries: a rule defined only here runs the real loop, and the
held-out set behind the copy measures follows its properties."""
import numpy as np
import pytest

from collapse_jax import files, paradigms, selection
from collapse_jax.store import ArrayStore, Source
from helpers import run_one, tiny


class FarFromMean(selection.Rule):
    """A toy rule: the n candidates farthest from the candidates' mean."""
    name = 'far_from_mean'
    uses_distances = True

    def pick(self, features, n, *, seed):
        x = np.asarray(features, np.float64).reshape(len(features), -1)
        far = np.argsort(-np.linalg.norm(x - x.mean(0), axis=1), kind='stable')[:n]
        return far, dict(toy=True)


@pytest.mark.slow
def test_a_rule_registered_in_a_test_runs_the_loop_with_the_right_heldout_size(
        tmp_path, monkeypatch, engine):
    monkeypatch.setitem(selection.RULES, FarFromMean.name, FarFromMean())
    cfg = tiny(paradigm='replace', selection='far_from_mean', generations=2)
    recs = run_one(cfg, tmp_path, engine)
    assert [r['generation'] for r in recs] == [0, 1]
    gd = tmp_path / 'gen_001'
    info = files.read_json(gd / 'selection.json')
    assert info['rule'] == 'far_from_mean' and info['toy'] and 'arithmetic' in info
    # D_1 is the rule's picks among S_0's shuffled candidates
    pool = np.load(tmp_path / 'gen_000' / 'pool.npy')
    picked = pool[np.load(gd / 'train_index.npy')].reshape(16, -1).astype(float)
    rest = np.delete(pool.reshape(len(pool), -1), np.load(gd / 'train_index.npy'), 0)
    mean = pool.reshape(len(pool), -1).mean(0)
    assert np.linalg.norm(picked - mean, axis=1).min() >= np.linalg.norm(rest - mean, axis=1).max()
    # it reads distances, so H_1 repeats it at D_1's pool size: N = 16 from 2N = 32 draws of the
    # 32-image evaluation sample, one replica (an i.i.d. rule would give two, 32 images)
    assert np.load(gd / 'heldout.npy').shape[0] == 16
    assert recs[1]['copy_heldout_n'] == 16


def test_a_rule_that_reads_no_distances_gets_a_heldout_set_at_n():
    class Every(selection.Rule):
        name = 'every'
    lp = tiny(selection='none').loop
    assert not paradigms.get('replace').pool_size_matters('none')
    assert paradigms.get('replace').pool_size_matters('greedy')
    assert paradigms.get('accumulate').pool_size_matters('none')  # it mixes whole pools
    assert not paradigms.get('accumulate_subsample').pool_size_matters('none')
    draws = ArrayStore({Source.pool(0): np.zeros((64, 8, 8, 1), np.uint8)}, n=16, pool_size=32)
    held, why = paradigms.heldout_set(*paradigms.of_config(lp), 0, draws,
                                      rng=np.random.default_rng(0))
    assert held.shape[0] == 64 and '4 independent replica(s)' in why
    assert Every.name not in selection.RULES  # defining a subclass registers nothing


@pytest.mark.parametrize('paradigm,g,size', [('replace', 2, 16), ('fresh', 2, 16),
                                             ('accumulate_subsample', 2, 16)])
def test_training_set_sizes(paradigm, g, size):
    assert paradigms.get(paradigm).train_size(g, 16, 2, 'none') == size


def test_accumulate_none_trains_on_the_growing_union():
    p = paradigms.get('accumulate')
    assert [p.train_size(g, 16, 2, 'none') for g in range(4)] == [16, 48, 80, 112]
    assert [p.train_size(g, 16, 2, 'greedy') for g in range(4)] == [16, 16, 16, 16]
    assert p.candidate_count(1, 16, 32) == 16 + 2 * 32


def test_config_checks_list_the_registries():
    cfg = tiny()
    cfg.loop.selection = 'best'
    with pytest.raises(ValueError, match='loop.selection=.best.; allowed: none, random, greedy, '
                                         'threshold'):
        paradigms.check_config(cfg)
    cfg.loop.update(paradigm='accumulate_subsample', selection='greedy')
    with pytest.raises(ValueError, match='with accumulate_subsample; allowed: none, random'):
        paradigms.check_config(cfg)
    cfg.loop.paradigm = 'keep'
    with pytest.raises(ValueError, match="loop.paradigm='keep'; allowed: replace, accumulate, "
                                         'accumulate_subsample, fresh'):
        paradigms.check_config(cfg)

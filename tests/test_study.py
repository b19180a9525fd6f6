"""The study: which runs it makes, the figures and results it draws from finished runs, and one
real (toy-size) run through the whole command."""
import json
import os

import numpy as np
import pytest

from collapse_jax import plan, study, study_report
from helpers import fake_run, tiny

VARIANTS = 'replace:none,accumulate:greedy'


def toy(ns='16,24', seeds='0,1', headline=16, variants=VARIANTS, generations=2):
    import ml_collections
    cfg = tiny(generations=generations)
    cfg.study = ml_collections.ConfigDict(dict(ns=ns, seeds=seeds, headline_n=headline,
                                               variants=variants, seed_variants=''))
    return cfg


def labels(variants):
    return ','.join(v.label for v in variants)


def test_later_seeds_may_run_a_subset_of_the_variants():
    cfg = toy(seeds='0,1')
    cfg.study.seed_variants = 'replace:none'
    p = plan.study_plan(cfg)
    assert labels(p.variants_at(0)) == 'replace/none,accumulate/greedy'
    assert labels(p.variants_at(1)) == 'replace/none'


def test_the_variants_every_seed_runs_go_first_at_every_seed():
    cfg = toy(seeds='0,1')
    cfg.study.seed_variants = 'replace:none'
    order = [(n, seed, labels(vs)) for n, seed, vs in plan.study_plan(cfg).passes()]
    every = 'replace/none,accumulate/greedy'
    assert order == [(16, 0, 'replace/none'), (24, 0, 'replace/none'), (16, 1, 'replace/none'),
                     (16, 0, every), (24, 0, every)]
    assert [(n, s) for n, s, _ in order[:3]] == plan.study_plan(cfg).runs()
    for bad in ('accumulate:greedy', 'replace:greedy'):  # must start with the first; a subset
        cfg.study.seed_variants = bad
        with pytest.raises(ValueError, match='study.seed_variants=.*subset of study.variants'):
            plan.study_plan(cfg)


def test_runs_every_size_with_the_first_seed_and_every_seed_at_the_headline_size():
    assert plan.study_plan(toy(ns='32,64,128', seeds='0,1,2', headline=64)).runs() == [
        (32, 0), (64, 0), (128, 0), (64, 1), (64, 2)]


@pytest.mark.slow
def test_draws_figures_and_results_from_finished_runs(tmp_path):
    cfg = toy()
    for n, seed in plan.study_plan(cfg).runs():
        for i, item in enumerate(VARIANTS.split(',')):
            fake_run(str(tmp_path / f'N{n}_seed{seed}' / item.replace(':', '_')),
                     *item.split(':'), seed=n + 10 * seed + i)
    res = study_report.draw(cfg, str(tmp_path))
    for name in ('gs_by_n', 'entropy_by_n', 'entropy_vs_log_gs', 'selection_gs_fd', 'real_share',
                 'nearest_first', 'nearest_last', 'nearest_last_replace_none',
                 'nearest_last_accumulate_greedy'):
        assert os.path.getsize(tmp_path / 'figures' / f'{name}.png') > 0, name
    rows = res['rows']
    assert len(rows) == 3 * 2 * 3  # (N, seed) runs x variants x generations
    pts = np.array([(r['train_entropy'], np.log(r['gs_mse'])) for r in rows
                    if r['variant'] == 'replace/none'])
    assert res['pearson_points'] == len(pts) == 9
    assert res['pearson_entropy_log_gs'] == pytest.approx(np.corrcoef(pts.T)[0, 1])
    last = [r for r in rows if r['variant'] == 'replace/none' and r['n'] == 16
            and r['generation'] == 2]
    h, gs = ([r[k] for r in last] for k in ('train_entropy', 'gs_mse'))  # FD: same at both seeds
    assert len(h) == 2 and (f"| replace/none | 2 | {np.mean(gs):.4f} [{min(gs):.4f}, "
                            f"{max(gs):.4f}] | {last[0]['fd']:.1f} | "
                            f'{np.mean(h):.1f} [{min(h):.1f}, {max(h):.1f}] |'
                            ) in (tmp_path / 'figures' / 'table.md').read_text()
    every = np.array([(r['train_entropy'], np.log(r['gs_mse'])) for r in rows
                      if r['generation'] or r['variant'] == 'replace/none'])
    assert res['pearson_all_points'] == 18 - 3  # generation 0 once per run
    assert res['pearson_all_variants'] == pytest.approx(np.corrcoef(every.T)[0, 1])
    # across spaces: the pixel entropy against log GS in the digits space and against copy_z
    base = [r for r in rows if r['variant'] == 'replace/none']
    for key, y in (('pearson_entropy_log_gs_digits', lambda r: np.log(r['gs_digits'])),
                   ('pearson_entropy_copy_z', lambda r: r['copy_z'])):
        pts = np.array([(r['train_entropy'], y(r)) for r in base])
        assert res[key] == pytest.approx(np.corrcoef(pts.T)[0, 1]), key
    # what the r can tell: entropy against the generation index, and across variants at each
    # generation (both seeds, headline N)
    pts = np.array([(r['train_entropy'], r['generation']) for r in base if r['n'] == 16])
    assert res['pearson_entropy_generation'] == pytest.approx(np.corrcoef(pts.T)[0, 1])
    for g in (1, 2):
        pts = np.array([(r['train_entropy'], np.log(r['gs_mse'])) for r in rows
                        if r['n'] == 16 and r['generation'] == g])
        assert len(pts) == 4
        assert res['pearson_within_generation'][g] == pytest.approx(np.corrcoef(pts.T)[0, 1])
    assert os.path.getsize(tmp_path / 'figures' / 'copying.png') > 0
    assert 'accumulate/greedy, N = 16, seeds 0 / 1' in (tmp_path / 'figures' / 'table.md'
                                                        ).read_text()
    assert json.load(open(tmp_path / 'figures' / 'results.json'))['rows'] == json.loads(
        json.dumps(rows))
    assert (tmp_path / 'figures' / 'results.csv').read_text().count('\n') == len(rows) + 1


@pytest.mark.slow
def test_one_real_study_run_end_to_end_and_headline_check(tmp_path, engine, monkeypatch):
    from collapse_jax import engine as engine_lib
    left, reach = [], engine_lib.Progress.reach

    def spy(self, key):  # the ETA's count of generations still to train, at each one reached
        reach(self, key)
        left.append((self.total, self.following))
    monkeypatch.setattr(engine_lib.Progress, 'reach', spy)
    cfg = toy(ns='16', seeds='0', variants='replace:none,replace:greedy')
    res = study.run_study(cfg, str(tmp_path), engine)
    assert sorted(os.listdir(tmp_path)) == ['N16_seed0', 'figures']
    assert [r['generation'] for r in res['rows']] == [0, 1, 0, 1]
    # generation 0 once, then one more per variant: 3, told once; the shared generation 0 of
    # the second variant is not counted again
    assert left == [(3, 2), (3, 1), (3, 1), (3, 0)]
    assert study.run_study(cfg, str(tmp_path), engine)['rows'] == res['rows']  # resumed: nothing redone
    # GS in the digits space, from the run's files, by brute force
    from collapse_jax import features
    f, g1 = features.get('digits'), tmp_path / 'N16_seed0' / 'replace_greedy' / 'gen_001'
    pool, train = f(np.load(g1 / 'pool.npy')), f(np.load(g1 / 'train_images.npy'))
    d = np.sqrt(((pool[:, None].astype(np.float64) - train[None]) ** 2).sum(-1)).min(1)
    row = next(r for r in res['rows'] if r['variant'] == 'replace/greedy' and r['generation'] == 1)
    assert row['gs_digits'] == pytest.approx(d.mean(), rel=1e-4)
    bad = toy(headline=20)
    with pytest.raises(ValueError, match='study.headline_n=20 must be one of'):
        study.run_study(bad, str(tmp_path / 'bad'), engine)


def test_cost_counts_every_training_and_sampler_call_by_hand():
    cfg = toy(ns='16,24', seeds='0,1', headline=16, variants='replace:none,accumulate:none',
              generations=3)
    cfg.train.update(steps=0, epochs=2, batch_size=8)
    # runs (16, 0), (24, 0), (16, 1); generation 0 once per run, then each variant per generation;
    # accumulate:none trains on N (1 + 2g) images, so ceil(2 * size / 8) steps of batch 8
    steps = {16: [4] + [4, 12] + [4, 20], 24: [6] + [6, 18] + [6, 30]}
    # each sampling: the 2N pool and the 32-image evaluation sample, 5 steps each
    evals = 5 * 5 * (2 * (16 + 24 + 16) + 3 * 32)
    assert plan.study_cost(cfg) == dict(train_images=8 * sum(sum(steps[n]) for n in (16, 24, 16)),
                                   unet_evals=evals)
    cfg.model.num_classes, cfg.sample.guidance = 10, 2.0  # guidance: two evaluations per step
    assert plan.study_cost(cfg)['unet_evals'] == 2 * evals
    cfg.study.seed_variants = 'replace:none'  # seed 1 runs one variant: 1 + 2 gens, not 1 + 2 x 2
    cfg.model.num_classes = 0
    assert plan.study_cost(cfg)['unet_evals'] == evals - 5 * 2 * (2 * 16 + 32)


def test_a_bad_study_list_names_its_field(tmp_path):
    with pytest.raises(ValueError, match=r"study.ns='64,abc'; allowed: integers >= 1, comma-separated"):
        plan.study_plan(toy(ns='64,abc'))
    with pytest.raises(ValueError, match=r"study.seeds='x'; allowed"):
        plan.study_plan(toy(seeds='x'))

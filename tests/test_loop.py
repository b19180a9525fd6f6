"""End to end: the loop at tiny size, its run directory, and resume after crashes."""
import json
import os

import jax
import numpy as np
import pytest

from collapse_jax import loop, paradigms, plan, selection
from collapse_jax.engine import Engine
from collapse_jax.store import REAL, ArrayStore, Source
from collapse_jax import train as train_lib
from helpers import crash_once, run_one, strip, tiny

def tensorboard_scalars(logdir):
    """{tag: [(step, value)]} from the event files in logdir, read as TFRecords by hand."""
    import struct
    from tensorboardX.proto import event_pb2
    out = {}
    for name in sorted(os.listdir(logdir)):
        blob = open(os.path.join(logdir, name), 'rb').read()
        at = 0
        while at < len(blob):
            (length,) = struct.unpack('<Q', blob[at:at + 8])
            event = event_pb2.Event.FromString(blob[at + 12:at + 12 + length])
            at += 16 + length
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.mark.slow
def test_two_generations_end_to_end(tmp_path, engine, digits_features):
    cfg = tiny(paradigm='accumulate', selection='none')
    cfg.score.feature_space = 'digits'
    recs = run_one(cfg, str(tmp_path), engine)
    assert [r['generation'] for r in recs] == [0, 1]
    r0, r1 = recs
    assert r0['n_train'] == 16 and r0['n_pool'] == 32 and r0['real_share'] == 1.0
    assert r1['n_train'] == 16 + 32 and r1['real_share'] == pytest.approx(16 / 48)
    for r in recs:
        for key in ('train_entropy', 'pool_entropy', 'gs_l2', 'gs_mse', 'pool_variance'):
            assert np.isfinite(r[key]) and r[key] != 0, key
        assert 0 <= r['memorization'] <= 1 and r['feature_space'] == 'pixel'
        # FD / precision / recall in the digits space against held-out real digits
        assert r['fd_space'] == 'digits' and r['fd'] > 0 and r['fd_n'] == 32
        assert 0 <= r['precision'] <= 1 and 0 <= r['recall'] <= 1
        assert r['fd_reference'] == 'held-out real, n=32'
        assert r['feature_info']['digits']['accuracy'] >= 0.95
        assert r['train_entropy_feat'] == pytest.approx(r['train_entropy'], rel=1e-6)  # pixel
    # copying against collapse: the held-out sets, and the scale-free GS by brute force
    assert r0['copy_heldout'] == 'held-out real' and r0['copy_heldout_n'] == 32
    # accumulate/none: one replica, 16 held-out real beside E_0's 32 (pools of 2N)
    assert r1['copy_heldout_n'] == 48 and r1['copy_heldout'].startswith('1 independent replica')
    d0 = np.load(tmp_path / 'gen_000' / 'train_images.npy').reshape(16, -1).astype(np.float64)
    p0 = np.load(tmp_path / 'gen_000' / 'pool.npy').reshape(32, -1).astype(np.float64)
    dist = np.sqrt(((p0[:, None] - d0[None]) ** 2).sum(-1)).min(1)
    self_d = np.sqrt(((d0[:, None] - d0[None]) ** 2).sum(-1)) + np.diag(np.full(16, np.inf))
    assert r0['gs_ratio'] == pytest.approx(dist.mean() / self_d.min(1).mean(), rel=1e-6)
    assert r0['memorization_calibrated'] == pytest.approx(np.mean(dist < r0['copy_threshold']))
    assert r0['mean_intensity'] == pytest.approx(p0.mean())
    assert np.load(tmp_path / 'gen_001' / 'eval.npy').shape == (32, 8, 8, 1)
    for r in recs:
        assert np.isfinite(r['copy_z']) and r['fd_floor'] > 0 and r['copy_threshold'] > 0
        assert r['train_entropy_dedup'] >= r['train_entropy'] - 1e-6
        assert 0 <= r['recognizable'] <= 1 and 0 <= r['recognizable_real'] <= 1
        assert r['participation_ratio'] >= 1 and r['train_participation_ratio'] >= 1
    src = np.load(tmp_path / 'gen_001' / 'train_source.npy')
    assert sorted(np.unique(src).tolist()) == [-1, 0]
    pool = np.load(tmp_path / 'gen_000' / 'pool.npy')
    assert pool.shape == (32, 8, 8, 1) and pool.dtype == np.uint8
    # what gen 1 trains on is exactly the stored uint8 pool rows it names
    imgs, idx = np.load(tmp_path / 'gen_001' / 'train_images.npy'), np.load(
        tmp_path / 'gen_001' / 'train_index.npy')
    np.testing.assert_array_equal(imgs[src == 0], pool[idx[src == 0]])
    for f in ('curves.png', 'config.json', 'gen_000/samples.png', 'gen_001/nearest.png',
              'gen_001/projection.png', 'entropy_gs.png'):
        assert os.path.getsize(tmp_path / f) > 0, f
    # the training record: every logged step (log_every 3 of 6) with its learning rate
    rows = [json.loads(x) for x in (tmp_path / 'train_log.jsonl').read_text().splitlines()]
    assert [(r['generation'], r['step']) for r in rows] == [(0, 3), (0, 6), (1, 3), (1, 6)]
    lr = train_lib.lr_schedule(cfg, 6)
    for r in rows:
        assert r['lr'] == pytest.approx(float(lr(r['step'] - 1)))
        assert r['grad_norm'] > 0 and np.isfinite(r['loss'])
    # ... and in TensorBoard, one event run per generation
    tb = tensorboard_scalars(tmp_path / 'tb' / 'gen_001')
    assert [s for s, _ in tb['train/loss']] == [3, 6]
    assert [v for _, v in tb['train/loss']] == pytest.approx([r['loss'] for r in rows[2:]])
    page = (tmp_path / 'report.html').read_text()
    # 3 pictures per generation + curves + entropy/GS + the loss, all inlined
    assert page.count('src="data:image/png;base64,') == 3 * 2 + 3 and 'Training loss' in page
    assert 'Generation 1' in page and '<b>digits</b>' in page


def brute_auc(d_gen, d_held):
    """U / (mn) by counting pairs: a sample farther than a held-out image counts 1, a tie 1/2."""
    diff = d_gen[:, None] - d_held[None]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def nearest_l2(a, b):
    a, b = (x.reshape(len(x), -1).astype(np.float64) for x in (a, b))
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)


@pytest.mark.slow
def test_relative_copying_uses_fresh_draws_never_the_pool(tmp_path, engine):
    # replace:none at N = 16 with E_g of 32: two replicas of 16 from 16 draws each, so H_1 is all
    # of E_0. Scored against a leak (the pool S_0 as the held-out set) the numbers differ
    recs = run_one(tiny(paradigm='replace', selection='none'), str(tmp_path), engine)
    r1 = recs[1]
    d1 = np.load(tmp_path / 'gen_001' / 'train_images.npy')
    d_gen = nearest_l2(np.load(tmp_path / 'gen_001' / 'pool.npy'), d1)
    d_held = nearest_l2(np.load(tmp_path / 'gen_000' / 'eval.npy'), d1)
    d_leak = nearest_l2(np.load(tmp_path / 'gen_000' / 'pool.npy'), d1)
    assert r1['copy_heldout_n'] == 32 and r1['copy_heldout'].startswith('2 independent replica')
    assert r1['copy_auc'] == pytest.approx(brute_auc(d_gen, d_held), abs=1e-9)
    assert abs(brute_auc(d_gen, d_leak) - r1['copy_auc']) > 0.05  # the leak would show
    assert r1['copy_share_q05'] == pytest.approx(np.mean(d_gen < np.quantile(d_held, 0.05)))
    assert r1['copy_heldout_median'] == pytest.approx(np.median(d_held))


@pytest.mark.slow
def test_sweep_runs_variants_and_shares_generation_zero(tmp_path, monkeypatch):
    cfg = tiny(generations=2)
    cfg.sweep = 'replace:greedy,fresh:random'
    trained = []
    real_train = Engine.train
    monkeypatch.setattr(Engine, 'train',
                        lambda self, cfg, x, y, g, *a, **k: trained.append(g) or
                        real_train(self, cfg, x, y, g, *a, **k))
    eng = Engine(cfg)
    runs = loop.run(cfg, str(tmp_path), eng)
    assert trained == [0, 1, 1]  # generation 0 is trained once for both variants
    # retrace guard: one compiled train step and one sampler trace served every generation
    # and both variants
    assert len(eng.train_steps) == 1 and [f._cache_size() for f in eng.train_steps.values()] == [1]
    assert eng.sampler._cache_size() == 1
    g, f = runs['replace/greedy'], runs['fresh/random']
    assert g[0]['train_entropy'] == f[0]['train_entropy'] and g[0]['gs_l2'] == f[0]['gs_l2']
    assert g[1]['how_built']['rule'] == 'greedy' and f[1]['how_built']['rule'] == 'random'
    # one calibrated copy distance for every generation and variant of a seed
    assert len({r['copy_threshold'] for r in g + f}) == 1
    # fresh: round(0.1 * 16) = 2 new real images, never used before, beside 14 pool images
    src = np.load(tmp_path / 'fresh_random' / 'gen_001' / 'train_source.npy')
    idx = np.load(tmp_path / 'fresh_random' / 'gen_001' / 'train_index.npy')
    d0 = np.load(tmp_path / 'fresh_random' / 'gen_000' / 'train_index.npy')
    assert (src == -2).sum() == 2 and (src == 0).sum() == 14 and f[1]['real_share'] == 2 / 16
    assert not set(idx[src == -2]) & set(d0)
    assert os.path.getsize(tmp_path / 'compare.png') > 0
    assert 'replace/greedy' in (tmp_path / 'compare.html').read_text()
    # greedy keeps the farthest-apart half of the pool: D_1 is more spread than random halves
    pool = np.load(tmp_path / 'replace_greedy' / 'gen_000' / 'pool.npy').reshape(32, -1) * 1.0
    d1 = np.load(tmp_path / 'replace_greedy' / 'gen_001' / 'train_images.npy').reshape(16, -1)
    from collapse_jax import knn_entropy
    rand = np.mean([knn_entropy(pool[np.random.default_rng(s).choice(32, 16, replace=False)])
                    for s in range(5)])
    assert knn_entropy(d1 * 1.0) > rand


@pytest.mark.slow
@pytest.mark.parametrize('where', ['train', 'sample', 'score', 'select', 'metrics_write'])
def test_crash_and_rerun_gives_the_uninterrupted_metrics(tmp_path, monkeypatch, engine, where,
                                                         uninterrupted):
    cfg, want, _ = uninterrupted
    with monkeypatch.context() as m:
        if where == 'train':  # generation 1, step 5: after the step-3 checkpoint
            crash_once(m, train_lib, 'batch_indices',
                       lambda n, b, step, seed, g: (g, step) == (1, 5))
        elif where == 'sample':
            crash_once(m, Engine, 'sample',
                       lambda self, cfg, params, count, generation, *_: generation == 1)
        elif where == 'score':
            crash_once(m, loop.Run, 'score', lambda self, g, *a: g == 1)
        elif where == 'select':  # the rule's pick for D_1 (the first pick of the run)
            crash_once(m, selection.get(cfg.loop.selection), 'pick')
        else:
            crash_once(m, loop.files, 'save_jsonl', lambda path, _: path.endswith('metrics.jsonl'))
        with pytest.raises(KeyboardInterrupt):
            run_one(cfg, str(tmp_path / 'run'), engine)
    got = strip(run_one(cfg, str(tmp_path / 'run'), engine))
    assert got == want
    lines = (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()
    assert [json.loads(x)['generation'] for x in lines] == [0, 1]  # no duplicates
    # the training record too: a resumed generation's rows replace the lost ones, once each
    assert ((tmp_path / 'run' / 'train_log.jsonl').read_text()
            == (uninterrupted[2] / 'train_log.jsonl').read_text())


def test_a_preempted_sweep_stops_instead_of_starting_its_next_variant(tmp_path, engine,
                                                                      monkeypatch):
    class Preempted(loop.Preemption):
        def __enter__(self):
            super().__enter__()
            self.flag = True  # as if SIGTERM came before the first step
            return self
    monkeypatch.setattr(loop, 'Preemption', Preempted)
    cfg = tiny(generations=2)
    cfg.sweep = 'replace:none,replace:greedy'
    with pytest.raises(loop.Stopped, match='stopped by SIGTERM in generation 0'):
        loop.run(cfg, str(tmp_path), engine)
    assert (tmp_path / 'replace_none' / 'gen_000' / 'ckpt').exists()  # the checkpoint is saved
    assert not (tmp_path / 'replace_greedy').exists()


def test_validation_names_the_field():
    for field, value, match in [('paradigm', 'recycle', 'loop.paradigm'),
                                ('selection', 'best', 'loop.selection'),
                                ('pool_factor', 3, 'loop.pool_factor=3; allowed: 1, 2, 5')]:
        cfg = tiny()
        cfg.loop[field] = value
        with pytest.raises(ValueError, match=match):
            plan.validate(cfg)
    cfg = tiny()
    cfg.data.resolution = 6
    with pytest.raises(ValueError, match='data.resolution=6'):
        plan.validate(cfg)
    cfg = tiny()
    cfg.train.batch_size = 6
    with pytest.raises(ValueError, match='divisible by the device count'):
        plan.validate(cfg)
    cfg = tiny()
    cfg.data.n = 5000
    with pytest.raises(ValueError, match='exceeds the 1797 images'):
        plan.validate(cfg, dataset_size=1797)
    cfg = tiny()
    cfg.score.feature_space = 'inception'
    with pytest.raises(ValueError, match="score.feature_space='inception' needs features.inception"):
        plan.validate(cfg)
    cfg.features.inception = '/nope/pt_inception.pth'
    with pytest.raises(ValueError, match="features.inception='/nope/pt_inception.pth': no such"):
        plan.validate(cfg)
    cfg = tiny(feature_space='clip')
    with pytest.raises(ValueError, match="loop.feature_space='clip'; allowed: pixel, digits"):
        plan.validate(cfg)


@pytest.mark.slow
def test_each_seed_trains_from_its_own_initial_weights(tmp_path, engine):
    """A study shares one engine over seeds: seed 1 must start from seed 1's weights, exactly as
    on an engine of its own (the old engine kept the first seed's weights for every run)."""
    a = run_one(tiny(generations=1), str(tmp_path / 's0'), engine)
    cfg1 = tiny(generations=1)
    cfg1.seed = 1
    shared = run_one(cfg1, str(tmp_path / 's1_shared'), engine)
    own = run_one(cfg1, str(tmp_path / 's1_own'), Engine(cfg1))
    np.testing.assert_array_equal(np.load(tmp_path / 's1_shared' / 'gen_000' / 'pool.npy'),
                                  np.load(tmp_path / 's1_own' / 'gen_000' / 'pool.npy'))
    assert strip(shared) == strip(own) and strip(shared) != strip(a)


def test_initial_weights_follow_the_seed_and_the_engine_holds_none():
    cfg0, cfg1 = tiny(), tiny()
    cfg1.seed = 1
    p0, p0b, p1 = (train_lib.init_params(c) for c in (cfg0, cfg0, cfg1))
    leaves = lambda p: [np.asarray(x) for x in jax.tree.leaves(p)]  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(leaves(p0), leaves(p0b)))
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(p0), leaves(p1)))


def test_engine_refuses_a_config_it_was_not_compiled_for(engine):
    cfg = tiny()
    cfg.seed, cfg.data.n, cfg.train.lr = 3, 24, 1e-3  # weights, data, step: the engine serves
    engine.check(cfg)
    cfg.sample.steps, cfg.model.layers_per_block = 7, 2
    with pytest.raises(ValueError, match=r'model.layers_per_block, sample.steps differ'):
        engine.check(cfg)


@pytest.mark.slow
def test_train_steps_are_keyed_on_every_setting_they_compile(tmp_path, engine):
    """An engine reused with another learning rate or EMA gets another step, not the old one."""
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    fresh, seen = Engine(tiny(), engine.mesh), []
    for i, fields in enumerate([{}, {'lr': 1e-3}, {'ema': True}, {'log_every': 2}]):
        cfg = tiny()
        cfg.train.update(steps=2, **fields)
        params = train_lib.init_params(cfg)
        init = jax.tree.map(np.array, params)  # a host copy: the step may donate the buffers
        state = fresh.train(cfg, images, None, 0, str(tmp_path / str(i)), params).state
        seen.append(len(fresh.train_steps))
        if fields.get('ema'):  # two EMA updates moved the average off the initial weights
            moved = [not np.array_equal(a, b) for a, b in
                     zip(jax.tree.leaves(state['ema']), jax.tree.leaves(init))]
            assert int(state['ema_count']) == 2 and any(moved), 'the EMA step ran'
    assert seen == [1, 2, 3, 3]  # log_every is not compiled in; lr and ema are


@pytest.mark.slow
def test_records_hold_exactly_the_registry_keys(uninterrupted):
    """Every key a run writes is registered (metrics.py: title, unit, views), and every
    registered key is written by a 1-channel run with an evaluation sample."""
    from collapse_jax import files, metrics
    recs = files.read_jsonl(str(uninterrupted[2] / 'metrics.jsonl'))
    written = set().union(*recs)
    assert written == set(metrics.BY_KEY), sorted(written ^ set(metrics.BY_KEY))
    assert all(set(r) <= set(metrics.BY_KEY) for r in recs)


@pytest.mark.slow
def test_nulls_recomputed_by_brute_force_from_the_files(uninterrupted):
    """Each record's absolute measures and their nulls, recomputed in float64 from the arrays on
    disk: H_g (heldout.npy) and D_g (train_images.npy). The calibrated distance comes from
    held-out real images against D_0 (generation 0's H) and is the same at every generation."""
    _, recs, workdir = uninterrupted
    gens = [workdir / f'gen_{g:03d}' for g in range(len(recs))]
    d0, real_held = (np.load(gens[0] / f) for f in ('train_images.npy', 'heldout.npy'))
    assert recs[0]['copy_heldout'] == 'held-out real'
    threshold = np.median(nearest_l2(real_held, d0)) / 3
    for rec, gd in zip(recs, gens):
        d_g, held = np.load(gd / 'train_images.npy'), np.load(gd / 'heldout.npy')
        assert held.dtype == np.uint8 and len(held) == rec['copy_heldout_n']
        assert rec['copy_threshold'] == pytest.approx(threshold, rel=1e-9)
        d_held = nearest_l2(held, d_g)
        assert rec['memorization_calibrated_null'] == pytest.approx(np.mean(d_held < threshold))
        assert rec['gs_l2_null'] == pytest.approx(np.mean(d_held) / 127.5, rel=1e-6)
        flat = d_g.reshape(len(d_g), -1).astype(np.float64)
        pair = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
        np.fill_diagonal(pair, np.inf)  # another image: an exact duplicate counts, itself not
        assert rec['train_near_copy_share'] == pytest.approx(np.mean(pair.min(1) < threshold))
        assert rec['copy_auc_lo'] <= rec['copy_auc'] <= rec['copy_auc_hi']


@pytest.mark.slow
def test_workdir_with_another_config_is_refused(tmp_path, engine):
    run_one(tiny(generations=1), str(tmp_path), engine)
    with pytest.raises(ValueError, match='loop.selection'):
        run_one(tiny(generations=1, selection='greedy'), str(tmp_path), engine)
    lower_lr = tiny(generations=1)
    lower_lr.train.lr = 1e-4  # what the non-finite-loss message advises: accepted
    lower_lr.cpu_devices = 2  # how the host is split: accepted
    assert len(run_one(lower_lr, str(tmp_path), engine)) == 1


@pytest.mark.slow
def test_one_device_makes_the_same_choices_as_four(tmp_path, uninterrupted):
    import jax
    from collapse_jax import parallel
    cfg, four, four_dir = uninterrupted
    one = strip(run_one(
        cfg, str(tmp_path), Engine(cfg, parallel.make_mesh(jax.devices()[:1]))))
    for a, b in zip(one, four):
        assert a['final_loss'] == pytest.approx(b['final_loss'], rel=1e-5)
        assert a['train_entropy'] == pytest.approx(b['train_entropy'], rel=1e-4)
    np.testing.assert_array_equal(np.load(tmp_path / 'gen_001' / 'train_index.npy'),
                                  np.load(four_dir / 'gen_001' / 'train_index.npy'))


@pytest.mark.slow
def test_class_conditional_guided_loop_keeps_labels(tmp_path):
    """The CFG experiment: labels train the model, a class-balanced guided pool keeps its labels,
    and the selected D_1 carries the labels of the pool rows it took."""
    cfg = tiny(paradigm='replace', selection='greedy')
    cfg.model.num_classes, cfg.sample.guidance = 10, 2.0
    cfg.data.n, cfg.sample.batch_size = 20, 20
    recs = run_one(cfg, str(tmp_path), Engine(cfg))
    assert len(recs) == 2 and recs[0]['sampler']['guidance'] == 2.0
    pool_labels = np.load(tmp_path / 'gen_000' / 'pool_labels.npy')
    assert np.bincount(pool_labels, minlength=10).tolist() == [4] * 10  # balanced over classes
    idx = np.load(tmp_path / 'gen_001' / 'train_index.npy')
    np.testing.assert_array_equal(np.load(tmp_path / 'gen_001' / 'train_labels.npy'),
                                  pool_labels[idx])


def test_experiment_configs_validate():
    from configs import cfg_mnist, quick_cpu
    for mod in (quick_cpu, cfg_mnist):
        variants = plan.sweep_configs(mod.get_config(), '/unused')
        assert len(variants) >= 2
    c = cfg_mnist.get_config()
    assert c.model.num_classes == 10 and c.sample.guidance == 2.0
    from configs import cifar10_paper, study_cifar10, study_cpu
    s = study_cpu.get_config()
    p = plan.study_plan(s)
    assert p.runs() == [(256, 0), (256, 1)] and s.loop.generations == 5
    # held-out replicas of >= 1,000 images under greedy, and the real data holds every part
    assert s.score.eval_n // (s.loop.pool_factor * 256) * 256 >= 1000
    assert 256 + 2 * s.score.fd_n + max(256, s.score.eval_n) <= 5000
    for n, seed, _ in p.passes():  # every (N, seed) x variant of the CPU study is valid
        s.data.n, s.sweep = n, ','.join(f'{a}:{b}' for a, b in p.variants_at(seed))
        assert len(plan.sweep_configs(s, '/unused')) == (3 if seed == 0 else 2)
    big = study_cifar10.get_config()  # the paper's schedule: epochs x N / batch fixed
    assert big.train.steps == 500 * 32768 // 128 == 8000 * 2048 // 128
    assert big.study.variants == big.sweep and big.study.headline_n == 32768
    assert 'accumulate_subsample:none' in big.sweep and 'accumulate:none' not in big.sweep
    for mod in (cifar10_paper, study_cifar10):  # the paper's spaces need the user's weights
        with pytest.raises(ValueError, match="loop.feature_space='dinov2' needs features.dinov2"):
            plan.sweep_configs(mod.get_config(), '/unused')


@pytest.mark.slow
def test_each_pool_is_featurized_once_across_generations(tmp_path, engine, monkeypatch):
    """accumulate selects from D_0 and every pool so far, each generation: in a feature space,
    each pool's features are made once (for its scoring), kept beside it and read by every later
    selection, and the picks are the ones featurizing the candidates afresh gives."""
    import hashlib
    from collapse_jax import features
    seen, real_call = [], features.Featurizer.__call__

    def spy(self, images):
        if self.name == 'digits':
            seen.append(hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest())
        return real_call(self, images)
    monkeypatch.setattr(features.Featurizer, '__call__', spy)
    cfg = tiny(paradigm='accumulate', selection='greedy', feature_space='digits', generations=3)
    run_one(cfg, str(tmp_path), engine)
    pools = [np.load(tmp_path / f'gen_{g:03d}' / 'pool.npy') for g in range(3)]
    for g, pool in enumerate(pools):
        assert seen.count(hashlib.sha1(pool.tobytes()).hexdigest()) == 1, g
        np.testing.assert_array_equal(np.load(tmp_path / f'gen_{g:03d}' / 'features_digits.npy'),
                                      real_call(features.get('digits'), pool))
    # generation 2's training set, rebuilt with the candidates featurized afresh: the same
    r = loop.Run(cfg, str(tmp_path), engine)
    store = ArrayStore({REAL: r.real.d0(), Source.pool(0): pools[0], Source.pool(1): pools[1]},
                       n=cfg.data.n, pool_size=2 * cfg.data.n, featurize=features.get('digits'))
    fresh = paradigms.next_training_set(
        *paradigms.of_config(cfg.loop), 1, store,
        rng=loop.streams.numpy_rng(cfg.seed, 'candidates', 1),
        seed=loop.streams.numpy_seed(cfg.seed, 'selection', 1))
    np.testing.assert_array_equal(fresh.images, np.load(tmp_path / 'gen_002' / 'train_images.npy'))

"""The self-consuming loop: D_g -> train -> sample pool S_g -> score -> select -> D_{g+1}.

Run directory (one per run):
  config.json       the resolved config (a rerun with another config is refused)
  metrics.jsonl     one record per generation, rewritten atomically (never duplicated)
  curves.png        every measure over generations
  gen_XXX/          train_images.npy (+ train_labels/source/index.npy, selection.json): D_g
                    ckpt/ (orbax: preemption checkpoint, then the generation's final model)
                    pool.npy (+ pool_labels.npy): S_g as uint8, exactly what is scored and reused
                    samples.png, nearest.png
Each phase's output is written atomically and marks the phase done, so rerunning the same command
after a kill continues from the last finished phase (and training from its last checkpoint).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import logging
import time

import numpy as np
import jax
from jax.experimental import multihost_utils

from collapse_jax import (data, diffusion, features, files, measure, parallel, report, scoring,
                          selection)
from collapse_jax import train as train_lib

log = logging.getLogger('collapse_jax')

PM1 = measure.PM1


def validate(cfg, dataset_size: int | None = None):
    """Checks the config as a whole before any work; raises ValueError naming the field."""
    def need(ok, msg):
        if not ok:
            raise ValueError(msg)
    lp = cfg.loop
    need(lp.paradigm in selection.PARADIGMS,
         f'loop.paradigm={lp.paradigm!r}; allowed: {", ".join(selection.PARADIGMS)}')
    need(lp.selection in selection.SELECTIONS,
         f'loop.selection={lp.selection!r}; allowed: {", ".join(selection.SELECTIONS)}')
    need(lp.paradigm != 'accumulate_subsample' or lp.selection in ('none', 'random'),
         f'loop.selection={lp.selection!r} with accumulate_subsample; allowed: none, random '
         '(the per-source subsample is the selection)')
    need(lp.pool_factor in (1, 2, 5), f'loop.pool_factor={lp.pool_factor}; allowed: 1, 2, 5')
    need(lp.generations >= 1, f'loop.generations={lp.generations}; must be >= 1')
    need(0 < lp.fresh_fraction < 1 or lp.paradigm != 'fresh',
         f'loop.fresh_fraction={lp.fresh_fraction}; allowed: 0 < x < 1')
    for field, space in (('loop.feature_space', lp.feature_space),
                         ('score.feature_space', fd_space(cfg))):
        need(space in features.SPACES, f'{field}={space!r}; allowed: {", ".join(features.SPACES)}')
        if space in ('inception', 'dinov2'):
            path = cfg.features[space]
            need(path, f'{field}={space!r} needs features.{space}: a local weights file '
                 '(.safetensors, .npz or .pth in the PyTorch layout); nothing is downloaded')
            need(os.path.exists(path), f'features.{space}={path!r}: no such file')
    need(cfg.features.batch_size > 0, f'features.batch_size={cfg.features.batch_size}; must be > 0')
    need(cfg.score.pr_k >= 1, f'score.pr_k={cfg.score.pr_k}; must be >= 1')
    for field in ('data.n', 'train.batch_size', 'sample.batch_size', 'train.log_every',
                  'train.ckpt_every', 'data.resolution'):
        sec, key = field.split('.')
        need(cfg[sec][key] > 0, f'{field}={cfg[sec][key]}; must be > 0')
    need(cfg.data.n >= 2, f'data.n={cfg.data.n}; must be >= 2')
    need(cfg.train.steps > 0 or (cfg.train.steps == 0 and cfg.train.epochs > 0),
         f'train.steps={cfg.train.steps}, train.epochs={cfg.train.epochs}; need steps > 0, or '
         'steps = 0 and epochs > 0')
    need(cfg.train.lr > 0, f'train.lr={cfg.train.lr}; must be > 0')
    need(cfg.score.k >= 1, f'score.k={cfg.score.k}; must be >= 1')
    need(cfg.model.num_classes >= 0, f'model.num_classes={cfg.model.num_classes}; must be >= 0')
    parallel.check_divisible(cfg.train.batch_size, 'train.batch_size')
    parallel.check_divisible(cfg.sample.batch_size, 'sample.batch_size')
    levels = len(train_lib.unet.PRESETS.get(cfg.model.preset, {}).get('widths', ()))
    need(levels, f'model.preset={cfg.model.preset!r}; allowed: {", ".join(train_lib.unet.PRESETS)}')
    need(cfg.data.resolution % 2 ** (levels - 1) == 0,
         f'data.resolution={cfg.data.resolution}: model.preset={cfg.model.preset} has {levels} '
         f'levels and needs a multiple of {2 ** (levels - 1)}')
    need(cfg.data.channels in (1, 3), f'data.channels={cfg.data.channels}; allowed: 1, 3')
    need(cfg.model.dtype in ('float32', 'bfloat16'),
         f"model.dtype={cfg.model.dtype!r}; allowed: 'float32', 'bfloat16'")
    diffusion.sampler_coefficients(np.linspace(0.99, 0.01, cfg.diffusion.num_steps),
                                   cfg.sample.steps, cfg.sample.variance)
    if dataset_size is not None:
        extra = fresh_per_generation(cfg) * (lp.generations - 1)
        need(cfg.data.n + extra <= dataset_size,
             f'data.n={cfg.data.n} (+{extra} fresh) exceeds the {dataset_size} images of '
             f'data.source={cfg.data.source!r}')


def fd_space(cfg):
    return cfg.score.feature_space or cfg.loop.feature_space


def featurizer(cfg, space):
    return features.get(space, cfg.features, cfg.features.batch_size)


def fresh_per_generation(cfg):
    return int(round(cfg.loop.fresh_fraction * cfg.data.n)) if cfg.loop.paradigm == 'fresh' else 0


def _threshold_params(cfg):
    tau = cfg.loop.tau or features.DEFAULT_TAU.get(cfg.loop.feature_space, 60.0)
    decay = cfg.loop.decay or (0.95 if cfg.loop.paradigm in ('replace', 'fresh') else 0.80)
    return tau, decay


def _barrier(name):
    """Multi-host: the other processes wait until process 0 has written what they read next."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _gen_dir(workdir, g):
    return os.path.join(workdir, f'gen_{g:03d}')


def _load_train_set(d):
    """D_g as saved by _save_train_set: images, labels (or None), source ids, row index."""
    out = {}
    for key in ('images', 'labels', 'source', 'index'):
        p = os.path.join(d, f'train_{key}.npy')
        out[key] = np.load(p) if os.path.exists(p) else None
    return out


def _save_train_set(d, images, labels, source, index, info):
    """D_g: the images file goes last and marks the set complete."""
    if labels is not None:
        files.save_npy(os.path.join(d, 'train_labels.npy'), labels)
    files.save_npy(os.path.join(d, 'train_source.npy'), source)
    files.save_npy(os.path.join(d, 'train_index.npy'), index)
    files.save_json(os.path.join(d, 'selection.json'), info)
    files.save_npy(os.path.join(d, 'train_images.npy'), images)


def _flatten(d, prefix=''):
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f'{prefix}{k}.') if isinstance(v, dict) else {prefix + k: v})
    return out


# fields a resumed run may change: extending the run, logging more or less often, and the
# learning rate (the advice after a non-finite loss is to resume with a lower one)
RESUMABLE_CHANGES = ('loop.generations', 'train.log_every', 'train.lr')


def _check_workdir_config(workdir, cfg_json):
    path = os.path.join(workdir, 'config.json')
    if os.path.exists(path):
        with open(path) as f:
            old = _flatten(json.load(f))
        new = _flatten(json.loads(cfg_json))
        diff = sorted(k for k in old.keys() | new.keys()
                      if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
        if diff:
            raise ValueError(f'workdir {workdir} holds a run with a different config '
                             f'({", ".join(diff)}); resume with the same config, or use a new '
                             '--workdir (delete its config.json to force)')
    if jax.process_index() == 0:
        files.atomic_write(path, lambda f: f.write(cfg_json.encode()))


class _Preemption:
    """SIGTERM (TPU preemption notice) -> save a checkpoint at the next step and exit cleanly."""

    def __init__(self):
        self.flag = False

    def __enter__(self):
        self.old = signal.signal(signal.SIGTERM, self._set)
        return self

    def _set(self, *_):
        log.warning('SIGTERM: saving a checkpoint and stopping')
        self.flag = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.old)


class Engine:
    """What every generation (and every variant of a sweep) shares: the mesh, the model graph
    and initial weights, the compiled sampler and train steps. Built once, compiled once."""

    def __init__(self, cfg, mesh=None):
        self.mesh = mesh or parallel.make_mesh()
        self.graphdef, self.init_params = train_lib.build_model(cfg, cfg.data.channels)
        shape = (cfg.data.resolution, cfg.data.resolution, cfg.data.channels)
        self.sampler = diffusion.make_sampler(
            self.graphdef, diffusion.linear_alphas_cumprod(
                cfg.diffusion.num_steps, cfg.diffusion.beta_start, cfg.diffusion.beta_end),
            shape=shape, steps=cfg.sample.steps, clip_x0=cfg.sample.clip_x0,
            variance=cfg.sample.variance, guidance=cfg.sample.guidance,
            num_classes=cfg.model.num_classes, sharding=parallel.data_sharding(self.mesh))
        self.compiled_steps = {}


def sweep_configs(cfg, workdir):
    """[(label, config, workdir)] for cfg.sweep's variants (or the one configured), all validated
    before any of them starts."""
    if not cfg.sweep:
        validate(cfg)
        return [(f'{cfg.loop.paradigm}/{cfg.loop.selection}', cfg, workdir)]
    out = []
    for item in cfg.sweep.split(','):
        if item.count(':') != 1:
            raise ValueError(f'sweep={cfg.sweep!r}: item {item!r} is not paradigm:selection')
        sub = cfg.copy_and_resolve_references()
        sub.loop.paradigm, sub.loop.selection = (x.strip() for x in item.split(':'))
        sub.sweep = ''
        validate(sub)
        out.append((f'{sub.loop.paradigm}/{sub.loop.selection}', sub,
                    os.path.join(workdir, f'{sub.loop.paradigm}_{sub.loop.selection}')))
    return out


def run(cfg, workdir, engine=None):
    """Runs cfg.sweep's variants (or the one configured) under workdir. Returns {label: records}.
    A sweep varies only loop fields, so its variants share one Engine (one compilation) and
    the generation-0 pool."""
    variants = sweep_configs(cfg, workdir)
    engine, runs = engine or Engine(variants[0][1]), {}
    for i, (label, sub, sub_dir) in enumerate(variants):
        if i and jax.process_index() == 0:
            _share_generation_zero(variants[0][2], sub_dir)
        _barrier(f'share {sub_dir}')
        runs[label] = run_generations(sub, sub_dir, engine)
    if cfg.sweep and jax.process_index() == 0:
        report.write_compare(workdir, {label: d for label, _, d in variants})
    return runs


def _share_generation_zero(src_dir, dst_dir):
    """Generation 0 (real data, its model and pool) is the same in every variant of a sweep:
    copy the finished pool instead of training it again."""
    src, dst = _gen_dir(src_dir, 0), _gen_dir(dst_dir, 0)
    if not os.path.exists(os.path.join(src, 'pool.npy')) or os.path.exists(
            os.path.join(dst, 'pool.npy')):
        return
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        if name.startswith(('train_', 'pool', 'selection.json', 'times.json')):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, '.tmp-' + name))
    for name in sorted(os.listdir(dst)):  # rename pool.npy last: it marks the phase done
        if name.startswith('.tmp-') and name != '.tmp-pool.npy':
            os.replace(os.path.join(dst, name), os.path.join(dst, name[5:]))
    os.replace(os.path.join(dst, '.tmp-pool.npy'), os.path.join(dst, 'pool.npy'))


def run_generations(cfg, workdir, engine=None):
    validate(cfg)
    images, labels = data.load(cfg.data)
    validate(cfg, dataset_size=len(images))
    if cfg.model.num_classes and labels is None:
        raise ValueError(f'model.num_classes={cfg.model.num_classes} but '
                         f'data.source={cfg.data.source!r} has no labels')
    os.makedirs(workdir, exist_ok=True)
    _check_workdir_config(workdir, cfg.to_json(sort_keys=True))
    n, lp = cfg.data.n, cfg.loop
    order = data.real_order(len(images), cfg.seed)
    real = dict(images=images[order[:n]], labels=None if labels is None else labels[order[:n]])
    fresh_n = fresh_per_generation(cfg)

    eng = engine or Engine(cfg)
    featurize = featurizer(cfg, lp.feature_space)
    scorer = featurizer(cfg, fd_space(cfg))
    reference = held_out_reference(cfg, images, order, fresh_n)
    metrics_path = os.path.join(workdir, 'metrics.jsonl')
    writer = jax.process_index() == 0

    g0 = _gen_dir(workdir, 0)
    if writer and not os.path.exists(os.path.join(g0, 'train_images.npy')):
        _save_train_set(g0, real['images'], real['labels'], np.full(n, -1, np.int16),
                        order[:n], dict(rule='real', n=n))
    _barrier('generation 0 training set')
    with _Preemption() as pre:
        for g in range(lp.generations):
            gd = _gen_dir(workdir, g)
            d_g = _load_train_set(gd)
            times = {}
            pool_path = os.path.join(gd, 'pool.npy')
            if not os.path.exists(pool_path):
                t0 = time.time()
                state, info = train_lib.train_generation(
                    cfg, d_g['images'], d_g['labels'], generation=g,
                    ckpt_dir=os.path.abspath(os.path.join(gd, 'ckpt')), mesh=eng.mesh,
                    graphdef=eng.graphdef, init_params=eng.init_params,
                    should_stop=lambda: pre.flag, compiled=eng.compiled_steps)
                if info['stopped']:
                    log.warning('stopped by SIGTERM in generation %d; rerun to resume', g)
                    return {}
                times['train_s'] = time.time() - t0
                t0 = time.time()
                pool, pool_labels = sample_pool(cfg, eng.sampler, state['ema'] if cfg.train.ema
                                                else state['params'], n * lp.pool_factor, g,
                                                eng.mesh)
                times['sample_s'] = time.time() - t0
                if writer:  # pool.npy goes last: it marks the phase done
                    files.save_json(os.path.join(gd, 'times.json'),
                                    dict(times, final_loss=info['final_loss'],
                                         steps=info['steps']))
                    if pool_labels is not None:
                        files.save_npy(os.path.join(gd, 'pool_labels.npy'), pool_labels)
                    files.save_npy(pool_path, pool)
                _barrier(f'pool {g}')
            pool = np.load(pool_path)
            records = files.read_jsonl(metrics_path)
            if not any(r['generation'] == g for r in records):
                t0 = time.time()
                rec = score_generation(cfg, g, d_g, pool, gd, featurize, scorer, reference)
                rec['score_s'] = time.time() - t0
                tpath = os.path.join(gd, 'times.json')
                if os.path.exists(tpath):
                    with open(tpath) as f:
                        rec.update(json.load(f))
                records = [r for r in records if r['generation'] != g] + [rec]
                if writer:
                    files.save_jsonl(metrics_path, sorted(records, key=lambda r: r['generation']))
                    report.plot_curves(os.path.join(workdir, 'curves.png'),
                                       {f'{lp.paradigm}/{lp.selection}': records})
                    report.write_report(workdir)
                log.info('generation %d: %s', g, json.dumps(
                    {k: rec[k] for k in ('train_entropy', 'gs_l2', 'memorization', 'fd',
                                         'precision', 'recall')}))
            nxt = _gen_dir(workdir, g + 1)
            if g + 1 < lp.generations and not os.path.exists(
                    os.path.join(nxt, 'train_images.npy')):
                t0 = time.time()
                new = next_training_set(cfg, g, workdir, real, images, labels, order, fresh_n,
                                        featurize)
                new[-1]['select_s'] = time.time() - t0
                if writer:
                    _save_train_set(nxt, *new)
                _barrier(f'training set {g + 1}')
    return files.read_jsonl(metrics_path)


def sample_pool(cfg, sampler, params, count, generation, mesh):
    """count uint8 images from fixed-shape batches (the last one trimmed), one compiled sampler
    for all. Batch b uses fold_in(fold_in(seed, generation), b)."""
    b = cfg.sample.batch_size
    key = jax.random.fold_in(jax.random.key(cfg.seed + 1), generation)
    labels = (np.arange(count) % cfg.model.num_classes).astype(np.int32) \
        if cfg.model.num_classes else None
    out, t0 = [], time.time()
    for i in range(-(-count // b)):
        rows = np.arange(i * b, (i + 1) * b) % count
        y = labels[rows] if labels is not None else np.zeros(b, np.int32)
        imgs, finite = sampler(params, jax.random.fold_in(key, i), parallel.shard_batch(mesh, y))
        if jax.process_count() > 1:
            imgs, finite = multihost_utils.process_allgather((imgs, finite), tiled=True)
        if not np.all(finite):
            raise FloatingPointError(
                f'generation {generation}: {int(np.sum(~np.asarray(finite)))} of {b} samples in '
                f'batch {i} are NaN/inf; they are not scored or selected. Retrain this '
                'generation with a lower --config.train.lr (delete its ckpt/ folder)')
        out.append(np.asarray(imgs))
        log.info('generation %d: sampled %d/%d (%.1f img/s)', generation,
                     min((i + 1) * b, count), count, (i + 1) * b / (time.time() - t0))
    return np.concatenate(out)[:count], labels


def held_out_reference(cfg, images, order, fresh_n):
    """Real images never used for training (after D_0 and every fresh draw), the reference of the
    Frechet distance and precision/recall; D_0 itself only if the dataset has none left."""
    used = cfg.data.n + fresh_n * (cfg.loop.generations - 1)
    want = cfg.score.reference_n or cfg.data.n * cfg.loop.pool_factor
    rows = order[used:used + want]
    if len(rows) < 2:
        return dict(images=images[order[:cfg.data.n]], name='D_0 (no held-out real images left)')
    return dict(images=images[rows], name=f'held-out real, n={len(rows)}')


def score_generation(cfg, g, d_g, pool, gd, featurize, scorer, reference):
    """The generation's record: D_g's entropy, S_g's GS and memorization against D_g, in pixels
    (entropy: 0-255, nats; GS and variance: [-1, 1]) and in the selection's feature space, plus
    the Frechet distance and precision/recall of S_g against held-out real images in the score
    space (score.feature_space)."""
    train_px, pool_px = features.pixel(d_g['images']), features.pixel(pool)
    px, nn_idx = measure.pixel_measures(d_g['images'], pool, cfg.score.k, cfg.score.mem_ratio,
                                        return_nearest=True)
    with open(os.path.join(gd, 'selection.json')) as f:
        sel_info = json.load(f)
    select_s = sel_info.pop('select_s', None)
    rec = dict(
        generation=g, paradigm=cfg.loop.paradigm, selection=cfg.loop.selection,
        feature_space=featurize.name, fd_space=scorer.name,
        units=f'entropy: nats, pixels in [0, 255]; gs/variance: pixels in [-1, 1]; *_feat: '
              f'{featurize.name} features; fd, precision, recall: {scorer.name} features',
        n_train=int(len(train_px)), n_pool=int(len(pool_px)),
        **px,
        pool_variance=float(np.sum(np.var(pool_px / PM1, axis=0))),
        train_variance=float(np.sum(np.var(train_px / PM1, axis=0))),
        real_share=float(np.mean(d_g['source'] < 0)), how_built=sel_info, select_s=select_s,
        sampler=dict(steps=cfg.sample.steps, clip_x0=cfg.sample.clip_x0,
                     variance=cfg.sample.variance, guidance=cfg.sample.guidance))
    if 'feats' not in reference:
        reference['feats'] = scorer(reference['images'])
    f_pool = scorer(pool)
    rec.update(measure.fd_measures(f_pool, reference['feats'], cfg.score.pr_k),
               fd_reference=reference['name'], feature_info={
                   featurize.name: featurize.info, scorer.name: scorer.info})
    if featurize is not scorer:
        f_pool = featurize(pool)
    rec.update(measure.space_measures(featurize(d_g['images']), f_pool, cfg.score.k))
    if jax.process_index() == 0:
        report.sample_grid(os.path.join(gd, 'samples.png'), pool[:cfg.score.grid])
        k = min(cfg.score.nn_pairs, len(pool))
        report.nn_grid(os.path.join(gd, 'nearest.png'), pool[:k], d_g['images'][nn_idx[:k]])
        report.projection(os.path.join(gd, 'projection.png'), reference['images'], pool,
                          f'generation {g}: samples on the real data\'s top-2 principal axes')
    return rec


def next_training_set(cfg, g, workdir, real, images, labels, order, fresh_n, featurize):
    """D_{g+1} from the paradigm's candidates and the selection rule. Returns the arguments of
    _save_train_set: (images, labels, source ids (-1 real, i = S_i), row index, info)."""
    n, lp = cfg.data.n, cfg.loop
    pools = {}

    def source(name):
        if name == 'real':
            return real['images'], real['labels']
        if name not in pools:
            gd = _gen_dir(workdir, int(name[1:]))
            lab = os.path.join(gd, 'pool_labels.npy')
            pools[name] = (np.load(os.path.join(gd, 'pool.npy')),
                           np.load(lab) if os.path.exists(lab) else None)
        return pools[name]

    cands = selection.candidate_sources(lp.paradigm, g, n, n * lp.pool_factor, cfg.seed)
    imgs = np.concatenate([source(s)[0][rows] for s, rows in cands])
    labs = None if cfg.model.num_classes == 0 else np.concatenate(
        [source(s)[1][rows] for s, rows in cands])
    src = np.concatenate([np.full(len(rows), -1 if s == 'real' else int(s[1:]), np.int16)
                          for s, rows in cands])
    idx = np.concatenate([rows for _, rows in cands])
    keep_all = lp.paradigm == 'accumulate_subsample' or (
        lp.paradigm == 'accumulate' and lp.selection == 'none')
    want = n - fresh_n
    tau, decay = _threshold_params(cfg)
    seed = int(np.random.default_rng([cfg.seed, g, 99]).integers(2 ** 31))
    info = dict(rule=lp.selection, paradigm=lp.paradigm, candidates=int(len(imgs)))
    if not keep_all:
        if len(imgs) < want:
            raise ValueError(f'loop.pool_factor={lp.pool_factor}: {len(imgs)} candidates cannot '
                             f'yield {want} images')
        pick, extra = selection.select(lp.selection, featurize(imgs), want, seed=seed, tau=tau,
                                       decay=decay)
        info.update(extra)
        imgs, src, idx = imgs[pick], src[pick], idx[pick]
        labs = None if labs is None else labs[pick]
    if fresh_n:
        rows = order[n + g * fresh_n: n + (g + 1) * fresh_n]
        imgs = np.concatenate([imgs, images[rows]])
        src = np.concatenate([src, np.full(fresh_n, -2, np.int16)])  # -2: fresh real
        idx = np.concatenate([idx, rows])
        labs = None if labs is None else np.concatenate([labs, labels[rows]])
    info.update(n=int(len(imgs)))
    return imgs, labs, src, idx, info

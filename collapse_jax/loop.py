"""The self-consuming loop: D_g -> train -> sample pool S_g -> score -> select -> D_{g+1}.

A `Run` is one variant (one paradigm and selection rule) in one directory (layout.RunDir). Its
phases are methods that return what the next phase needs: `train_and_sample` (a pool and its
times), `score` (the generation's record), `select` (the next training set). Each phase writes its
output atomically for resume and for people; within one process values pass as return values.
engine.Engine holds the compiled programs every generation and variant share, and runs them.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time

import numpy as np
import jax
from jax.experimental import multihost_utils

from collapse_jax import (data, diffusion, features, files, layout, measure, metrics, parallel,
                          paradigms, report, selection, streams)
from collapse_jax import engine as engine_lib
from collapse_jax import judge as judge_lib
from collapse_jax import train as train_lib
from collapse_jax.data import need

log = logging.getLogger('collapse_jax')


def validate(cfg, dataset_size: int | None = None, with_files: bool = True):
    """Every section's own checks, composed; raises ValueError naming the field. with_files=False
    leaves out the files a run reads (weights, the TFDS data_dir): a dry run lists them apart."""
    check_top_level(cfg)
    for check in (train_lib.check_config, diffusion.check_config, paradigms.check_config,
                  measure.check_config):
        check(cfg)
    data.check_config(cfg, with_files)
    features.check_config(cfg, with_files)
    if dataset_size is not None:
        extra = paradigms.fresh_per_generation(cfg) * (cfg.loop.generations - 1)
        need(cfg.data.n + extra <= dataset_size,
             f'data.n={cfg.data.n} (+{extra} fresh) exceeds the {dataset_size} images of '
             f'data.source={cfg.data.source!r}')


def check_top_level(cfg) -> None:
    """The fields outside any section."""
    for field in ('seed', 'cpu_devices'):
        need(cfg[field] >= 0, f'{field}={cfg[field]}; must be >= 0')
    need(not files.isfile(os.path.expanduser(cfg.compilation_cache)),
         f"compilation_cache={cfg.compilation_cache!r} is a file; give a directory, 'auto' or "
         "'' (off)")
    if cfg.sweep:  # the form here; each variant's paradigm and rule by its own validate
        layout.parse_variants(cfg.sweep)


def _barrier(name):
    """Multi-host: the other processes wait until process 0 has written what they read next."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# fields a resumed run may change: extending the run, logging more or less often, the
# learning rate (the advice after a non-finite loss is to resume with a lower one), how the host
# CPU is split, and the study section (which runs a study makes, not what one run does)
RESUMABLE_CHANGES = ('loop.generations', 'train.log_every', 'train.lr', 'cpu_devices',
                     'study.', 'force_cpu', 'compilation_cache')


def check_workdir_config(path, cfg_json):
    if files.exists(path):
        old = engine_lib.flatten(files.read_json(path))
        new = engine_lib.flatten(json.loads(cfg_json))
        diff = sorted(k for k in old.keys() | new.keys()
                      if not k.startswith(RESUMABLE_CHANGES) and old.get(k) != new.get(k))
        need(not diff, f'workdir {os.path.dirname(path)} holds a run with a different config '
             f'({", ".join(diff)}); resume with the same config, or use a new --workdir (delete '
             'its config.json to force)')
    if jax.process_index() == 0:
        files.atomic_write(path, lambda f: f.write(cfg_json.encode()))


class Stopped(Exception):
    """SIGTERM stopped the run at a checkpoint; the same command resumes it. Raised, not
    returned, so that a sweep or a study does not go on to its next variant."""


def stop_at_boundary(pre, where):
    """A SIGTERM that came outside training (sampling, scoring, selection) stops the run at the
    next phase boundary, every process together (the decision is collective)."""
    if parallel.any_process(pre.flag):
        raise Stopped(f'stopped by SIGTERM {where}; rerun to resume')


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


def sweep_configs(cfg, workdir, with_files: bool = True):
    """[(Variant, config, RunDir)] for cfg.sweep's variants (or the one configured, in workdir
    itself), all validated before any of them starts."""
    if not cfg.sweep:
        validate(cfg, with_files=with_files)
        return [(layout.Variant.of(cfg), cfg, layout.RunDir(workdir))]
    out = []
    for v in layout.parse_variants(cfg.sweep):
        sub = cfg.copy_and_resolve_references()
        sub.loop.paradigm, sub.loop.selection, sub.sweep = v.paradigm, v.rule, ''
        validate(sub, with_files=with_files)
        out.append((v, sub, layout.SweepDir(workdir).run(v)))
    return out


def run(cfg, workdir, engine=None, later=0, progress=None):
    """Runs cfg.sweep's variants (or the one configured) under workdir. Returns {label: records}.
    A sweep varies only loop fields, so its variants share one Engine (one compilation) and
    the generation-0 pool. `later`: generations the caller trains after this sweep (the ETA)."""
    variants = sweep_configs(cfg, workdir)
    engine, runs = engine or engine_lib.Engine(variants[0][1]), {}
    engine_lib.check_cpu_budget(cfg, engine, engine_lib.work(cfg, [(cfg.data.n, [
        v for v, _, _ in variants])]), 'this run')
    progress = progress or engine_lib.Progress()
    for i, (v, sub, rd) in enumerate(variants):
        if i and jax.process_index() == 0:
            rd.copy_generation_zero_from(variants[0][2])
        _barrier(f'share {rd.root}')
        after = later + (len(variants) - 1 - i) * (cfg.loop.generations - 1)
        runs[v.label] = Run(sub, rd.root, engine, later=after, progress=progress).run()
    if cfg.sweep and jax.process_index() == 0:
        report.write_compare(layout.SweepDir(workdir), {v.label: rd.root for v, _, rd in variants})
    return runs


def real_split(cfg) -> data.RealSplit:
    """The config checked, its data loaded and split (D_0, fresh images, held-out parts)."""
    validate(cfg)
    images, labels = data.load(cfg.data)
    validate(cfg, dataset_size=len(images))
    need(not cfg.model.num_classes or labels is not None,
         f'model.num_classes={cfg.model.num_classes} but data.source={cfg.data.source!r} '
         'has no labels')
    return data.RealSplit(images, labels, n=cfg.data.n, seed=cfg.seed,
                          fresh_per_generation=paradigms.fresh_per_generation(cfg),
                          generations=cfg.loop.generations)


class Run:
    """One variant's run: its config, directory, engine, the real split, the featurizers and the
    held-out reference."""

    def __init__(self, cfg, workdir, engine=None, later=0, progress=None):
        self.real = real_split(cfg)
        self.engine = engine or engine_lib.Engine(cfg)
        self.engine.check(cfg)  # at once, before any phase: train and sample check again
        self.cfg, self.dir = cfg, layout.RunDir(workdir)
        self.label = layout.Variant.of(cfg).label
        self.judge = judge_lib.Judge(cfg, self.real)
        self.writer = jax.process_index() == 0
        self._pools, self._evals = {}, {}  # generation -> S_g (images, labels) / E_g images
        self._real_features = None
        # the ETA: generations the job trains after this variant's
        self.later, self.progress = later, progress or engine_lib.Progress()

    def first_training_set(self) -> layout.TrainSet:
        images, labels = self.real.d0()
        n = len(images)
        return layout.TrainSet(images, labels, np.full(n, paradigms.REAL, np.int16),
                               self.real.d0_rows, dict(rule='real', n=n))

    def run(self) -> list:
        """The phase machine: every phase not yet done, generation by generation."""
        files.makedirs(self.dir.root)
        check_workdir_config(self.dir.config, self.cfg.to_json(sort_keys=True))
        d_g, g0 = self.first_training_set(), self.dir.gen(0)
        if self.writer and not g0.has_train_set():
            g0.save_train_set(d_g)
        _barrier('generation 0 training set')
        records, last = self.dir.records(), self.cfg.loop.generations - 1
        with _Preemption() as pre:
            for g in range(self.cfg.loop.generations):
                gd = self.dir.gen(g)
                if d_g is None:  # resumed: D_g was made by an earlier process
                    d_g = gd.load_train_set()
                times, t_gen, resumed = None, time.time(), files.isdir(gd.ckpt)
                self.progress.following = self.cfg.loop.generations - 1 - g + self.later
                if not gd.has_pool():                                    # phase 1: train, sample
                    times = self.train_and_sample(g, d_g, should_stop=lambda: pre.flag)
                    if times is None:
                        raise Stopped(f'stopped by SIGTERM in generation {g}; rerun to resume')
                stop_at_boundary(pre, f'after training and sampling generation {g}')
                if not any(r['generation'] == g for r in records):      # phase 2: score
                    rec = self.score(g, d_g, self.pool(g)[0], times or gd.times())
                    records = self._add_record(records, rec)
                stop_at_boundary(pre, f'after scoring generation {g}')
                d_g = None
                if g < last and not self.dir.gen(g + 1).has_train_set():  # phase 3: select
                    if self.writer:  # one selection for all hosts: the others read it
                        d_g = self.select(g)
                        self.dir.gen(g + 1).save_train_set(d_g)
                    _barrier(f'training set {g + 1}')
                stop_at_boundary(pre, f'after selecting training set {g + 1}')
                if times is not None and not resumed:  # a whole generation, for the ETA
                    self.progress.generation_done(time.time() - t_gen)
        return records

    def _on_log(self, g):
        """Generation g's progress lines -> train_log.jsonl (appended; a resumed generation
        first drops its rows from the resume step on, in one atomic rewrite) and TensorBoard: one
        event run per generation (<run>/tb/gen_XXX), so that `tensorboard --logdir <workdir>`
        overlays every generation of every variant."""
        if not self.writer:
            return None
        from tensorboardX import SummaryWriter
        state = {}

        def on_log(step, metrics):
            if not state:
                rows = files.read_jsonl(self.dir.train_log)
                keep = [r for r in rows if r['generation'] != g or r['step'] < step]
                if keep != rows or not files.exists(self.dir.train_log):
                    files.save_jsonl(self.dir.train_log, keep)
                state['tb'] = SummaryWriter(os.path.join(self.dir.tensorboard, f'gen_{g:03d}'),
                                            flush_secs=10)
            files.append_jsonl(self.dir.train_log, dict(generation=g, step=step, **metrics))
            for k, v in metrics.items():
                state['tb'].add_scalar(f'train/{k}', v, step)
            state['tb'].flush()
        on_log.close = lambda: state['tb'].close() if state else None
        return on_log

    def pool(self, g):
        """S_g as (uint8 images, labels or None): made in this process, or read from its file."""
        if g not in self._pools:
            self._pools[g] = self.dir.gen(g).load_pool()
        return self._pools[g]

    def eval_sample(self, g):
        """E_g (uint8), the evaluation sample drawn apart from the pool; None if eval_n = 0."""
        if g not in self._evals:
            self._evals[g] = self.dir.gen(g).load_eval()
        return self._evals[g]

    def features(self, source: str, images):
        """The selection space's features of a source ('real' or 'S<i>'), made once per run: a
        pool never changes, so its features are kept beside it (gen_XXX/features_<space>.npy)
        for every later generation that reads them, accumulate's especially, and for a resumed
        run. None in pixel space (the features are the pixels)."""
        fz = self.judge.featurize
        if fz.name == 'pixel':
            return None
        if source == 'real':
            if self._real_features is None:
                self._real_features = fz(images)
            return self._real_features
        path = self.dir.gen(int(source[1:])).file(f'features_{fz.name}.npy')
        if files.exists(path):
            return files.load_npy(path, 'delete it: it is a cache, remade from the pool',
                                  mmap_mode='r')
        feats = fz(images)
        if self.writer:
            files.save_npy(path, feats)
        return feats

    def train_and_sample(self, g, d_g: layout.TrainSet, should_stop=lambda: False):
        """Trains generation g's model (resuming its checkpoint) and samples its pool. Returns
        the phase's times, or None if stopped by SIGTERM."""
        cfg, gd, eng, t0, on_log = self.cfg, self.dir.gen(g), self.engine, time.time(), \
            self._on_log(g)
        try:
            res = eng.train(cfg, d_g.images, d_g.labels, g, gd.ckpt, train_lib.init_params(cfg),
                            engine_lib.Events(should_stop, on_log=on_log, progress=self.progress))
        finally:
            if on_log is not None:
                on_log.close()
        if res.stopped:
            return None
        times = dict(train_s=time.time() - t0, final_loss=res.final_loss, steps=res.steps)
        t0, params = time.time(), res.weights(cfg.train.ema)
        self._pools[g] = eng.sample(cfg, params, cfg.data.n * cfg.loop.pool_factor, g)
        times['sample_s'] = time.time() - t0
        self._evals[g] = eng.sample(cfg, params, cfg.score.eval_n, g, 'eval')[0] \
            if cfg.score.eval_n else None
        times['eval_sample_s'] = time.time() - t0 - times['sample_s']
        if self.writer:
            gd.save_pool(*self._pools[g], times, self._evals[g])
        _barrier(f'pool {g}')
        return times

    def _add_record(self, records, rec):
        records = sorted([r for r in records if r['generation'] != rec['generation']] + [rec],
                         key=lambda r: r['generation'])
        if self.writer:
            files.save_jsonl(self.dir.metrics, records)
            report.plot_curves(self.dir.curves, {self.label: records})
            report.write_report(self.dir, records, self.cfg.to_dict())
        log.info('generation %d: %s', rec['generation'], json.dumps(
            {k: rec.get(k) for k in metrics.view('log')}))
        return records

    def score(self, g, d_g: layout.TrainSet, pool, times: dict) -> dict:
        """The generation's record (judge.Judge.record), its pictures, its times and what ran it
        (engine.runtime); H_g, the held-out set behind the copy measures and the nulls, goes to
        gen_XXX/heldout.npy."""
        cfg, t0 = self.cfg, time.time()
        draws = None if g == 0 or not cfg.score.eval_n else {
            s: self.eval_sample(paradigms.source_id(s))
            for s in paradigms.get(cfg.loop.paradigm).sources(g - 1) if s != 'real'}
        held = self.judge.heldout(g, draws)
        if self.writer and held[0] is not None:  # every record can be recomputed from files
            files.save_npy(self.dir.gen(g).file('heldout.npy'), held[0])
        rec, nn_idx = self.judge.record(g, d_g, pool, self.eval_sample(g), held,
                                        self.features(f'S{g}', pool))
        rt = engine_lib.runtime(cfg)  # not the device count: 1 and 4 devices choose the same
        rec.update({k: rt[k] for k in ('backend', 'device_kind', 'compute_dtype')})
        if self.writer:
            self._draw(g, d_g, pool, nn_idx)
        rec['score_s'] = time.time() - t0
        rec.update(times)
        return rec

    def _draw(self, g, d_g, pool, nn_idx):
        gd, k = self.dir.gen(g), min(self.cfg.score.nn_pairs, len(pool))
        report.sample_grid(gd.file('samples.png'), pool[:self.cfg.score.grid])
        report.nn_grid(gd.file('nearest.png'), pool[:k], d_g.images[nn_idx[:k]])
        report.projection(gd.file('projection.png'), self.judge.reference['images'], pool,
                          f"generation {g}: samples on the real data's top-2 principal axes")

    def select(self, g) -> layout.TrainSet:
        """D_{g+1} from S_g (and, by the paradigm, D_0 and earlier pools), plus fresh real images
        under 'fresh'."""
        cfg, t0 = self.cfg, time.time()
        sources = {s: self.real.d0() if s == 'real' else self.pool(paradigms.source_id(s))
                   for s in paradigms.get(cfg.loop.paradigm).sources(g)}
        fresh = None
        if paradigms.fresh_per_generation(cfg):
            rows = self.real.fresh_rows(g)
            fresh = (self.real.images[rows],
                     None if self.real.labels is None else self.real.labels[rows], rows)
        feats = None
        uses = selection.get(cfg.loop.selection).uses_distances
        if uses and self.judge.featurize.name != 'pixel':
            feats = {s: self.features(s, images) for s, (images, _) in sources.items()}
        try:
            d = paradigms.next_training_set(
                cfg.loop, g, cfg.data.n, sources, rng=streams.numpy_rng(cfg.seed, 'candidates', g),
                seed=streams.numpy_seed(cfg.seed, 'selection', g), featurize=self.judge.featurize,
                fresh=fresh, features=feats)
        except ValueError as e:
            raise ValueError(f'generation {g + 1}, loop.selection={cfg.loop.selection}: {e}') \
                from None
        d.info['select_s'] = time.time() - t0
        return d

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

from collapse_jax import data, files, layout, metrics, parallel, paradigms, plan, report, streams
from collapse_jax import engine as engine_lib
from collapse_jax import judge as judge_lib
from collapse_jax import train as train_lib
from collapse_jax.data import need
from collapse_jax.store import REAL, RunStore, Source

log = logging.getLogger('collapse_jax')


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


class Preemption:
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


def run(cfg, workdir, engine=None, progress=None):
    """Runs cfg.sweep's variants (or the one configured) under workdir. Returns {label: records}.
    A sweep varies only loop fields, so its variants share one Engine (one compilation) and
    the generation-0 pool. `progress`: the job's (a study's), else this sweep's own."""
    variants = plan.sweep_configs(cfg, workdir)
    engine, runs = engine or engine_lib.Engine(variants[0][1]), {}
    job = [(cfg.data.n, [v for v, _, _ in variants])]
    plan.check_cpu_budget(cfg, engine, plan.work(cfg, job), 'this run')
    progress = progress or engine_lib.Progress(plan.generations_trained(cfg, job))
    for i, (v, sub, rd) in enumerate(variants):
        if i and jax.process_index() == 0:
            rd.copy_generation_zero_from(variants[0][2])
        _barrier(f'share {rd.root}')
        runs[v.label] = Run(sub, rd.root, engine, progress=progress, shared=workdir).run()
    if cfg.sweep and jax.process_index() == 0:
        report.write_compare(layout.SweepDir(workdir), {v.label: rd.root for v, _, rd in variants})
    return runs


def real_split(cfg) -> data.RealSplit:
    """The config checked, its data loaded and split (D_0, fresh images, held-out parts)."""
    plan.validate(cfg)
    images, labels = data.load(cfg.data)
    plan.validate(cfg, dataset_size=len(images))
    need(not cfg.model.num_classes or labels is not None,
         f'model.num_classes={cfg.model.num_classes} but data.source={cfg.data.source!r} '
         'has no labels')
    return data.RealSplit(images, labels, n=cfg.data.n, seed=cfg.seed,
                          fresh_per_generation=paradigms.fresh_per_generation(cfg),
                          generations=cfg.loop.generations)


class Run:
    """One variant's run: its config, directory, engine, the real split, the featurizers and the
    held-out reference."""

    def __init__(self, cfg, workdir, engine=None, progress=None, shared=None):
        self.real = real_split(cfg)
        self.engine = engine or engine_lib.Engine(cfg)
        self.engine.check(cfg)  # at once, before any phase: train and sample check again
        self.cfg, self.dir = cfg, layout.RunDir(workdir)
        self.label = layout.Variant.of(cfg).label
        self.judge = judge_lib.Judge(cfg, self.real)
        self.writer = jax.process_index() == 0
        self.store = RunStore(self.dir, self.real, self.judge.featurize,
                              cfg.data.n * cfg.loop.pool_factor, self.writer)
        # the ETA; `shared`: where generation 0 is trained (a sweep's variants share it)
        self.progress = progress or engine_lib.Progress(self.cfg.loop.generations)
        self.shared = shared or workdir

    def first_training_set(self) -> layout.TrainSet:
        images, labels = self.real.d0()
        n = len(images)
        return layout.TrainSet(images, labels, np.full(n, REAL.code, np.int16),
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
        with Preemption() as pre:
            for g in range(self.cfg.loop.generations):
                gd = self.dir.gen(g)
                if d_g is None:  # resumed: D_g was made by an earlier process
                    d_g = gd.load_train_set()
                times, t_gen, resumed = None, time.time(), files.isdir(gd.ckpt)
                self.progress.reach((self.shared, 0) if g == 0 else (self.dir.root, g))
                if not gd.has_pool():                                    # phase 1: train, sample
                    times = self.train_and_sample(g, d_g, should_stop=lambda: pre.flag)
                    if times is None:
                        raise Stopped(f'stopped by SIGTERM in generation {g}; rerun to resume')
                stop_at_boundary(pre, f'after training and sampling generation {g}')
                if not any(r['generation'] == g for r in records):      # phase 2: score
                    rec = self.score(g, d_g, times or gd.times())
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

    def train_and_sample(self, g, d_g: layout.TrainSet, should_stop=lambda: False):
        """Trains generation g's model (resuming its checkpoint) and samples its pool. Returns
        the phase's times, or None if stopped by SIGTERM."""
        cfg, gd, eng, t0, on_log = self.cfg, self.dir.gen(g), self.engine, time.time(), \
            report.train_logger(self.dir, g) if self.writer else None
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
        pool, labels = eng.sample(cfg, params, self.store.pool_size, g)
        times['sample_s'] = time.time() - t0
        evals = eng.sample(cfg, params, cfg.score.eval_n, g, 'eval')[0] \
            if cfg.score.eval_n else None
        times['eval_sample_s'] = time.time() - t0 - times['sample_s']
        self.store.put(g, pool, labels, evals)
        if self.writer:
            gd.save_pool(pool, labels, times, evals)
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

    def score(self, g, d_g: layout.TrainSet, times: dict) -> dict:
        """The generation's record (judge.Judge.record), its pictures, its times and what ran it
        (engine.runtime); H_g, the held-out set behind the copy measures and the nulls, goes to
        gen_XXX/heldout.npy."""
        t0 = time.time()
        rec, nn_idx, held = self.judge.record(g, d_g, self.store)
        if self.writer and held is not None:  # every record can be recomputed from files
            files.save_npy(self.dir.gen(g).file('heldout.npy'), held)
        rt = engine_lib.runtime(self.cfg)  # not the device count: 1 and 4 devices choose the same
        rec.update({k: rt[k] for k in ('backend', 'device_kind', 'compute_dtype')})
        if self.writer:
            self._draw(g, d_g, self.store.images(Source.pool(g))[0], nn_idx)
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
        """D_{g+1} from the paradigm's sources in the store (S_g; D_0 and earlier pools), plus
        fresh real images under 'fresh'."""
        t0, cfg = time.time(), self.cfg
        try:
            d = paradigms.next_training_set(
                *paradigms.of_config(cfg.loop), g, self.store,
                rng=streams.numpy_rng(cfg.seed, 'candidates', g),
                seed=streams.numpy_seed(cfg.seed, 'selection', g))
        except ValueError as e:
            raise ValueError(f'generation {g + 1}, loop.selection={cfg.loop.selection}: {e}') \
                from None
        d.info['select_s'] = time.time() - t0
        return d

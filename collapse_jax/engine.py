"""The compiled programs, and the two things they do: train a generation's model, sample from it.

An `Engine` is built once per job (a run, a sweep, a study, a calibration) and shared by every
generation, variant and seed: the mesh, the UNet graph, the sampler and the train steps (keyed by
train.step_signature). Weights come from each run's own seed. `Engine.train` reports to an
`Events` object and returns a `TrainResult`; `Progress` computes every ETA the job prints.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable

import numpy as np
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from collapse_jax import diffusion, parallel, streams
from collapse_jax import train as train_lib
from collapse_jax.data import need

log = logging.getLogger('collapse_jax')


def flatten(d, prefix=''):
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f'{prefix}{k}.') if isinstance(v, dict) else {prefix + k: v})
    return out


def signature(cfg) -> dict:
    """The config fields the compiled sampler and model graph depend on."""
    keys = {'data.resolution': cfg.data.resolution, 'data.channels': cfg.data.channels}
    for sec in ('model', 'diffusion', 'sample'):
        keys.update(flatten(cfg[sec].to_dict(), f'{sec}.'))
    return keys


def runtime(cfg) -> dict:
    """What runs this config here; every record carries it, and the start line says it."""
    return dict(backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
                devices=jax.device_count(), processes=jax.process_count(),
                compute_dtype=train_lib.compute_dtype(cfg),
                matmul_precision=str(jax.config.jax_default_matmul_precision or 'default'))


def restore(mngr, step, state, ckpt_dir, generation):
    """The checkpoint at `step`, or one ValueError that says which checkpoint cannot be read and
    what is usable instead: an earlier step's (delete the unreadable one), or none (delete the
    generation's ckpt/ and it is trained again from its start)."""
    try:
        return mngr.restore(step, args=ocp.args.StandardRestore(state))
    except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged checkpoint
        why = ' '.join(str(e).split())[:160]
        earlier = [s for s in mngr.all_steps() if s < step]
        fix = (f'an earlier checkpoint (step {max(earlier)}) is kept: delete '
               f'{os.path.join(ckpt_dir, str(step))} to resume from it' if earlier else
               f'no earlier checkpoint is kept: delete {ckpt_dir} to train generation '
               f'{generation} again from its start')
        raise ValueError(f'{ckpt_dir}: the checkpoint at step {step} cannot be read '
                         f'({type(e).__name__}: {why}); {fix}') from None


def duration(s: float) -> str:
    s = int(round(s))
    return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


class Progress:
    """Every ETA of a job in one object, told the job's plan once: `total`, the generations it
    trains (plan.generations_trained); each run `reach`es its generations. A training's lines give the generation's ETA from the step rate since
    the last line, and the job's from the wall time of the last whole generation this process ran
    (before there is one, from the current training's projection)."""

    def __init__(self, total: int = 0):
        self.total, self.reached, self.per_generation = total, set(), None

    def reach(self, key):
        """A generation of the job reached (`key` names it; a generation reached again, as a
        resumed run or a later study pass finds it, counts once)."""
        self.reached.add(key)

    @property
    def following(self) -> int:
        """Generations the job trains after the current one."""
        return max(self.total - len(self.reached), 0)

    def generation_done(self, seconds: float):
        self.per_generation = seconds

    def start_training(self, step: int, steps: int):
        self.t0 = self.t_line = time.time()
        self.last, self.steps = step, steps

    def line(self, done: int) -> tuple[float, str]:
        """(steps/s since the last line, the ETA text) at step `done`."""
        now = time.time()
        rate = (done - self.last) / max(now - self.t_line, 1e-9)
        left = (self.steps - done) / rate
        per = self.per_generation or (now - self.t0 + left)
        after = max(per - (now - self.t0 + left), 0.0) + per * self.following
        self.t_line, self.last = now, done
        return rate, f'ETA generation {duration(left)}, run {duration(left + after)}'


@dataclasses.dataclass
class Events:
    """What a training tells its caller, and asks it; every field optional.
    should_stop: polled after each call of the train step (each step, unless
      train.steps_per_call > 1; SIGTERM): the state is saved and the result says stopped.
    hooks: {step: fn(state)}, run after that step, before its checkpoint (a resumed run never
      skips one).
    on_log: fn(step, {'loss', 'grad_norm', 'lr'}) at every progress line.
    progress: the job's Progress, for the ETA on each line."""
    should_stop: Callable[[], bool] = lambda: False
    hooks: dict = dataclasses.field(default_factory=dict)
    on_log: Callable | None = None
    progress: Progress | None = None


@dataclasses.dataclass
class TrainResult:
    state: dict
    steps: int
    final_loss: float
    stopped: bool

    def weights(self, use_ema: bool):
        """The weights a generation samples from: the EMA's if the config keeps one."""
        return self.state['ema'] if use_ema else self.state['params']


class Engine:
    """The compiled programs every generation, variant and seed share, and nothing else. A config
    that needs other programs is refused: `train` and `sample` check the config they are given."""

    def __init__(self, cfg, mesh=None):
        self.mesh = mesh or parallel.make_mesh()
        self.signature = signature(cfg)
        log.info('backend %(backend)s: %(devices)d x %(device_kind)s, %(processes)d process(es), '
                 'UNet compute dtype %(compute_dtype)s, matmul precision %(matmul_precision)s '
                 '(features, kNN and selection: highest)', runtime(cfg))
        self.graphdef = train_lib.model_graph(cfg)
        self.sampler = diffusion.make_sampler(
            self.graphdef, diffusion.sampler_coefficients(
                diffusion.alphas_cumprod(cfg), cfg.sample.steps, cfg.sample.variance),
            shape=(cfg.data.resolution, cfg.data.resolution, cfg.data.channels),
            clip_x0=cfg.sample.clip_x0, guidance=cfg.sample.guidance,
            num_classes=cfg.model.num_classes, sharding=parallel.data_sharding(self.mesh))
        self.train_steps, self.budget_checked = {}, False

    def check(self, cfg):
        theirs = signature(cfg)
        diff = sorted(k for k in theirs.keys() | self.signature.keys()
                      if theirs.get(k) != self.signature.get(k))
        need(not diff, f'this engine was compiled for another config ({", ".join(diff)} differ); '
             'build an Engine for this config')

    def _step(self, cfg, steps, calls=1):
        sig = (train_lib.step_signature(cfg, steps), calls)
        if sig not in self.train_steps:
            self.train_steps[sig] = train_lib.make_train_step(
                self.graphdef, train_lib.make_optimizer(cfg, steps), diffusion.alphas_cumprod(cfg),
                cfg, self.mesh, calls)
        return self.train_steps[sig]

    def train(self, cfg, images: np.ndarray, labels, generation: int, ckpt_dir, params,
              events: Events | None = None) -> TrainResult:
        """Trains a fresh model from `params` on `images` (uint8 [n, h, w, c]), resuming from
        `ckpt_dir` if a checkpoint is there. The batch order and the step's key depend only on
        (seed, generation, step), so a resumed training takes the steps an uninterrupted one
        would. train.feed 'device' keeps the images on the devices and gathers each batch there
        (train.steps_per_call steps a call); 'host' gathers in NumPy and transfers each batch.
        events.should_stop() ends training at the next call with a checkpoint; with several
        processes the decision is collective, taken at the next step that logs or saves, so
        every process saves the same step."""
        self.check(cfg)
        ev, n, t = events or Events(), images.shape[0], cfg.train
        steps = train_lib.total_steps(cfg, n)
        tx = train_lib.make_optimizer(cfg, steps)
        state = jax.device_put(train_lib.init_state(params, tx, t.ema),
                               parallel.replicated(self.mesh))
        mngr = train_lib.checkpoint_manager(ckpt_dir)
        start = mngr.latest_step()
        if start is not None:
            state = restore(mngr, start, state, ckpt_dir, generation)
            log.info('generation %d: resumed training at step %d/%d', generation, start, steps)
        start, lr = start or 0, train_lib.lr_schedule(cfg, steps)
        gen_key = streams.jax_key(cfg.seed, 'train', generation)
        labels = np.zeros(n, np.int32) if labels is None else labels.astype(np.int32)
        if t.feed == 'device':
            on_device = (parallel.replicate(self.mesh, images.reshape(n, -1)),
                         parallel.replicate(self.mesh, labels))
        progress, b, stopped = ev.progress or Progress(), t.batch_size, False
        progress.start_training(start, steps)

        def is_end(done):  # a step that logs, saves or runs a hook ends its call
            return (done % t.log_every == 0 or done % t.ckpt_every == 0 or done == steps
                    or done in ev.hooks)
        # the compiled steps, looked up once (a lookup sorts the train section's fields)
        step_fns = {k: self._step(cfg, steps, k) for k in {1, t.steps_per_call}}
        try:
            for step, k in train_lib.calls(start, steps, t.steps_per_call, is_end):
                rows = np.stack([train_lib.batch_indices(n, b, s, cfg.seed, generation)
                                 for s in range(step, step + k)])
                if t.feed == 'device':
                    state, metrics = step_fns[k](
                        state, *on_device, parallel.replicate(self.mesh, rows.astype(np.int32)),
                        gen_key)
                else:
                    state, metrics = step_fns[1](
                        state, parallel.shard_batch(self.mesh, images[rows[0]]),
                        parallel.shard_batch(self.mesh, labels[rows[0]]), gen_key)
                done, stopped = step + k, ev.should_stop()
                hook = ev.hooks.get(done)
                sync = (done % t.ckpt_every == 0 or done == steps or hook is not None
                        or done % t.log_every == 0)
                if jax.process_count() > 1:  # a notice may reach one host first: every process
                    stopped = sync and parallel.any_process(stopped)  # stops at the same step
                save = done % t.ckpt_every == 0 or done == steps or stopped or hook is not None
                if not (save or sync):
                    continue  # no host sync between progress lines
                lv = float(metrics['loss'])
                if not np.isfinite(lv):  # checked before any save: the last checkpoint stays good
                    raise FloatingPointError(
                        f'generation {generation}: non-finite loss {lv} at step {done}; the last '
                        f'good checkpoint is in {ckpt_dir}; rerun with a lower --config.train.lr '
                        'to resume from it')
                if done % t.log_every == 0 or done == steps:
                    rate, eta = progress.line(done)
                    log.info('generation %d step %d/%d loss %.4f %.1f img/s, %s', generation,
                             done, steps, lv, rate * b, eta)
                    if ev.on_log is not None:
                        ev.on_log(done, dict(loss=lv, grad_norm=float(metrics['grad_norm']),
                                             lr=float(lr(done - 1))))
                if hook is not None:
                    hook(state)
                if save:
                    mngr.save(done, args=ocp.args.StandardSave(train_lib.saveable(state)))
                if stopped:
                    break
        finally:  # an exception must not leave an async save half done
            mngr.wait_until_finished()
            mngr.close()
        return TrainResult(state, steps, float(state['loss']), stopped)

    def sample(self, cfg, params, count: int, generation: int, stream: str = 'sample'):
        """count uint8 images from fixed-shape batches (the last one trimmed), one compiled
        sampler for all. Batch b uses fold_in(the generation's `stream` key, b). Returns (images,
        labels or None)."""
        self.check(cfg)
        b = cfg.sample.batch_size
        key = streams.jax_key(cfg.seed, stream, generation)
        labels = (np.arange(count) % cfg.model.num_classes).astype(np.int32) \
            if cfg.model.num_classes else None
        out, t0 = [], time.time()
        for i in range(-(-count // b)):
            rows = np.arange(i * b, (i + 1) * b) % count
            y = labels[rows] if labels is not None else np.zeros(b, np.int32)
            imgs, finite = self.sampler(params, jax.random.fold_in(key, i),
                                        parallel.shard_batch(self.mesh, y))
            if jax.process_count() > 1:
                imgs, finite = multihost_utils.process_allgather((imgs, finite), tiled=True)
            if not np.all(finite):
                raise FloatingPointError(
                    f'generation {generation}: {int(np.sum(~np.asarray(finite)))} of {b} samples '
                    f'in batch {i} are NaN/inf; they are not scored or selected. Retrain this '
                    'generation with a lower --config.train.lr (delete its ckpt/ folder)')
            out.append(np.asarray(imgs))
            log.info('generation %d: sampled %d/%d (%.1f img/s)', generation,
                     min((i + 1) * b, count), count, (i + 1) * b / (time.time() - t0))
        return np.concatenate(out)[:count], labels

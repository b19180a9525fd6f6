"""Training one generation's model from scratch: state, the sharded step, EMA, orbax checkpoints.

The train state is a plain pytree {params, opt_state, ema, ema_count, step, loss}; the model graph stays
outside it, so one compiled step serves every generation. The step's key is
fold_in(generation_key, step) and the batch order depends only on (seed, generation, step), so a
resumed run takes exactly the steps an uninterrupted one would.
"""
from __future__ import annotations

import math
import logging
import time

import numpy as np
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from flax import nnx

from collapse_jax import diffusion, parallel, streams, unet
from collapse_jax.data import need

log = logging.getLogger('collapse_jax')


def _make_model(cfg, seed):
    return unet.make_unet(cfg.model.preset, in_channels=cfg.data.channels,
                          layers_per_block=cfg.model.layers_per_block,
                          num_classes=cfg.model.num_classes,
                          dtype=jnp.bfloat16 if cfg.model.dtype == 'bfloat16' else None, seed=seed)


def model_graph(cfg):
    """The UNet's graph, with no weights made (every run supplies its own)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: _make_model(cfg, 0)))
    return graphdef


def init_params(cfg):
    """The run's initial weights, from its own seed (streams 'init')."""
    _, state = nnx.split(_make_model(cfg, streams.init_seed(cfg.seed)))
    return nnx.to_pure_dict(state)


# train fields that the compiled step does not depend on (the rest key the compiled step)
NOT_COMPILED = ('log_every', 'ckpt_every')


def step_signature(cfg, steps: int) -> tuple:
    """Everything a compiled train step depends on, beyond the engine's model and diffusion."""
    return (steps,) + tuple(sorted((k, v) for k, v in cfg.train.items() if k not in NOT_COMPILED))


def check_config(cfg) -> None:
    """The model and train sections' own checks."""
    m, t = cfg.model, cfg.train
    need(m.preset in unet.PRESETS, f'model.preset={m.preset!r}; allowed: {", ".join(unet.PRESETS)}')
    levels = len(unet.PRESETS[m.preset]['widths'])
    need(cfg.data.resolution % 2 ** (levels - 1) == 0,
         f'data.resolution={cfg.data.resolution}: model.preset={m.preset} has {levels} '
         f'levels and needs a multiple of {2 ** (levels - 1)}')
    need(m.layers_per_block >= 1, f'model.layers_per_block={m.layers_per_block}; must be >= 1')
    need(m.num_classes >= 0, f'model.num_classes={m.num_classes}; must be >= 0')
    need(0 <= m.label_dropout < 1, f'model.label_dropout={m.label_dropout}; allowed: 0 <= x < 1')
    need(m.dtype in ('float32', 'bfloat16'),
         f"model.dtype={m.dtype!r}; allowed: 'float32', 'bfloat16'")
    need(t.batch_size > 0, f'train.batch_size={t.batch_size}; must be > 0')
    parallel.check_divisible(t.batch_size, 'train.batch_size')
    need(t.steps > 0 or (t.steps == 0 and t.epochs > 0),
         f'train.steps={t.steps}, train.epochs={t.epochs}; need steps > 0, or steps = 0 and '
         'epochs > 0')
    need(t.epochs >= 0, f'train.epochs={t.epochs}; must be >= 0')
    need(t.lr > 0, f'train.lr={t.lr}; must be > 0')
    for field in ('b1', 'b2', 'ema_decay'):
        need(0 <= t[field] < 1, f'train.{field}={t[field]}; allowed: 0 <= x < 1')
    for field in ('eps', 'grad_clip'):
        need(t[field] > 0, f'train.{field}={t[field]}; must be > 0')
    for field in ('weight_decay', 'warmup_steps'):
        need(t[field] >= 0, f'train.{field}={t[field]}; must be >= 0')
    for field in ('log_every', 'ckpt_every'):
        need(t[field] > 0, f'train.{field}={t[field]}; must be > 0')


def total_steps(cfg, n: int) -> int:
    if cfg.train.steps > 0:
        return cfg.train.steps
    return max(1, math.ceil(cfg.train.epochs * n / cfg.train.batch_size))


def lr_schedule(cfg, steps: int):
    """Linear warm-up from 0, then cosine decay to 0 over the generation's steps."""
    t = cfg.train
    return optax.warmup_cosine_decay_schedule(
        0.0, t.lr, min(t.warmup_steps, steps), max(steps, t.warmup_steps + 1), end_value=0.0)


def make_optimizer(cfg, steps: int):
    t = cfg.train
    return optax.chain(optax.clip_by_global_norm(t.grad_clip),
                       optax.adamw(lr_schedule(cfg, steps), b1=t.b1, b2=t.b2, eps=t.eps,
                                   weight_decay=t.weight_decay))


def init_state(params, tx, use_ema: bool):
    params = jax.tree.map(jnp.copy, params)  # the step donates the state; keep the caller's
    return dict(params=params, opt_state=tx.init(params),
                ema=jax.tree.map(jnp.copy, params) if use_ema else {},
                ema_count=jnp.zeros((), jnp.int32), step=jnp.zeros((), jnp.int32),
                loss=jnp.zeros((), jnp.float32))


def make_train_step(graphdef, tx, alphas_cumprod, cfg, mesh):
    """step(state, images_u8, labels, gen_key) -> (state, {'loss', 'grad_norm'}); batch sharded,
    state replicated. grad_norm is the global norm before clipping. The state keeps the last loss
    too, so a resumed run can report it."""
    loss_fn = diffusion.make_loss_fn(graphdef, alphas_cumprod, num_classes=cfg.model.num_classes,
                                     label_dropout=cfg.model.label_dropout)
    use_ema, max_decay = cfg.train.ema, cfg.train.ema_decay

    def step(state, images, labels, gen_key):
        key = jax.random.fold_in(gen_key, state['step'])
        loss, grads = jax.value_and_grad(loss_fn)(state['params'], images, labels, key)
        updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
        params = optax.apply_updates(state['params'], updates)
        ema, count = state['ema'], state['ema_count']
        if use_ema:  # warm-up: decay = min(max, (1 + n) / (10 + n))
            d = jnp.minimum(max_decay, (1.0 + count) / (10.0 + count))
            ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)
            count = count + 1
        new = dict(params=params, opt_state=opt_state, ema=ema, ema_count=count,
                   step=state['step'] + 1, loss=loss)
        return new, dict(loss=loss, grad_norm=optax.tree.norm(grads))

    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, dat, dat, rep), out_shardings=(rep, rep),
                   donate_argnums=0)


def batch_indices(n: int, batch: int, step: int, seed: int, generation: int) -> np.ndarray:
    """Rows of step `step`: a stream of per-epoch permutations, cut into full batches, so every
    batch has the same shape (no recompiles) and the order depends only on the step."""
    pos = np.arange(step * batch, (step + 1) * batch)
    out = np.empty(batch, np.int64)
    for epoch in np.unique(pos // n):
        perm = streams.numpy_rng(seed, 'batches', generation, int(epoch)).permutation(n)
        sel = pos // n == epoch
        out[sel] = perm[pos[sel] % n]
    return out


def _saveable(state):
    """One process: hand orbax a host copy (one slice per leaf instead of one per device, several
    times faster for small models). Several processes: the sharded arrays, which orbax gathers."""
    return jax.device_get(state) if jax.process_count() == 1 else state


def checkpoint_manager(directory, keep: int = 1):
    return ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def _duration(s: float) -> str:
    s = int(round(s))
    return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


def train_generation(cfg, images: np.ndarray, labels, *, generation: int, ckpt_dir, mesh,
                     graphdef, params, should_stop=lambda: False, compiled=None, hooks=None,
                     on_log=None, after_s=None):
    """Trains a fresh model on `images` (uint8 [n, h, w, c]); resumes from `ckpt_dir` if a
    checkpoint is there. Returns (state, info). `should_stop()` is polled each step (preemption):
    when it turns true the state is saved and `info['stopped']` is set. `compiled` (a dict kept
    by the caller) reuses the jitted step across generations with the same step_signature.
    `hooks` {step: fn(state)} run after that step, before its checkpoint (so a resumed run never
    skips one). Every progress line goes to `on_log(step, {'loss', 'grad_norm', 'lr'})` too and
    carries the generation's ETA; `after_s(train_s)`, given this generation's projected training
    seconds, estimates the run's time after this training ends, for the run's ETA."""
    n = images.shape[0]
    steps = total_steps(cfg, n)
    tx = make_optimizer(cfg, steps)
    state = init_state(params, tx, cfg.train.ema)
    state = jax.device_put(state, parallel.replicated(mesh))
    mngr = checkpoint_manager(ckpt_dir)
    start = mngr.latest_step()
    if start is not None:
        state = mngr.restore(start, args=ocp.args.StandardRestore(state))
        log.info('generation %d: resumed training at step %d/%d', generation, start, steps)
    start = start or 0
    compiled = {} if compiled is None else compiled
    sig = step_signature(cfg, steps)
    if sig not in compiled:
        compiled[sig] = make_train_step(graphdef, tx, diffusion.alphas_cumprod(cfg), cfg, mesh)
    step_fn, lr = compiled[sig], lr_schedule(cfg, steps)
    gen_key = streams.jax_key(cfg.seed, 'train', generation)
    labels = np.zeros(n, np.int32) if labels is None else labels.astype(np.int32)
    b = cfg.train.batch_size
    t0, t_log, info = time.time(), time.time(), dict(stopped=False)
    last_line = start  # step of the last progress line
    try:
        for step in range(start, steps):
            idx = batch_indices(n, b, step, cfg.seed, generation)
            state, metrics = step_fn(state, parallel.shard_batch(mesh, images[idx]),
                                     parallel.shard_batch(mesh, labels[idx]), gen_key)
            done, stop = step + 1, should_stop()
            hook = (hooks or {}).get(done)
            save = done % cfg.train.ckpt_every == 0 or done == steps or stop or hook is not None
            if not (save or done % cfg.train.log_every == 0):
                continue  # no host sync between progress lines
            lv = float(metrics['loss'])
            if not np.isfinite(lv):  # checked before any save: the last checkpoint stays good
                raise FloatingPointError(
                    f'generation {generation}: non-finite loss {lv} at step {done}; the last '
                    f'good checkpoint is in {ckpt_dir}; rerun with a lower --config.train.lr '
                    'to resume from it')
            if done % cfg.train.log_every == 0 or done == steps:
                now = time.time()
                rate = (done - last_line) / max(now - t_log, 1e-9)  # steps/s since the last line
                left = (steps - done) / rate
                eta = f'ETA generation {_duration(left)}'
                if after_s is not None:
                    eta += f', run {_duration(left + after_s(now - t0 + left))}'
                log.info('generation %d step %d/%d loss %.4f %.1f img/s, %s', generation, done,
                         steps, lv, rate * b, eta)
                t_log, last_line = now, done
                if on_log is not None:
                    on_log(done, dict(loss=lv, grad_norm=float(metrics['grad_norm']),
                                      lr=float(lr(done - 1))))
            if hook is not None:
                hook(state)
            if save:
                mngr.save(done, args=ocp.args.StandardSave(_saveable(state)))
            if stop:
                info['stopped'] = True
                break
    finally:  # an exception must not leave an async save half done
        mngr.wait_until_finished()
        mngr.close()
    info.update(steps=steps, final_loss=float(state['loss']))
    return state, info

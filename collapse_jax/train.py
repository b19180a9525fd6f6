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

from collapse_jax import diffusion, parallel, unet

log = logging.getLogger('collapse_jax')


def build_model(cfg, channels):
    model = unet.make_unet(cfg.model.preset, in_channels=channels,
                           layers_per_block=cfg.model.layers_per_block,
                           num_classes=cfg.model.num_classes,
                           dtype=jnp.bfloat16 if cfg.model.dtype == 'bfloat16' else None,
                           seed=cfg.seed)
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def total_steps(cfg, n: int) -> int:
    if cfg.train.steps > 0:
        return cfg.train.steps
    return max(1, math.ceil(cfg.train.epochs * n / cfg.train.batch_size))


def make_optimizer(cfg, steps: int):
    t = cfg.train
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, t.lr, min(t.warmup_steps, steps), max(steps, t.warmup_steps + 1), end_value=0.0)
    return optax.chain(optax.clip_by_global_norm(t.grad_clip),
                       optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps,
                                   weight_decay=t.weight_decay))


def init_state(params, tx, use_ema: bool):
    params = jax.tree.map(jnp.copy, params)  # the step donates the state; keep the caller's
    return dict(params=params, opt_state=tx.init(params),
                ema=jax.tree.map(jnp.copy, params) if use_ema else {},
                ema_count=jnp.zeros((), jnp.int32), step=jnp.zeros((), jnp.int32),
                loss=jnp.zeros((), jnp.float32))


def make_train_step(graphdef, tx, alphas_cumprod, cfg, mesh):
    """step(state, images_u8, labels, gen_key) -> (state, loss); batch sharded, state replicated.
    The state keeps the last loss too, so a resumed run can report it."""
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
        return new, loss

    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, dat, dat, rep), out_shardings=(rep, rep),
                   donate_argnums=0)


def batch_indices(n: int, batch: int, step: int, seed: int, generation: int) -> np.ndarray:
    """Rows of step `step`: a stream of per-epoch permutations, cut into full batches, so every
    batch has the same shape (no recompiles) and the order depends only on the step."""
    pos = np.arange(step * batch, (step + 1) * batch)
    out = np.empty(batch, np.int64)
    for epoch in np.unique(pos // n):
        perm = np.random.default_rng([seed, generation, int(epoch)]).permutation(n)
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


def train_generation(cfg, images: np.ndarray, labels, *, generation: int, ckpt_dir, mesh,
                     graphdef, init_params, should_stop=lambda: False, compiled=None):
    """Trains a fresh model on `images` (uint8 [n, h, w, c]); resumes from `ckpt_dir` if a
    checkpoint is there. Returns (state, info). `should_stop()` is polled each step (preemption):
    when it turns true the state is saved and `info['stopped']` is set. `compiled` (a dict kept
    by the caller) reuses the jitted step across generations of the same length."""
    n = images.shape[0]
    steps = total_steps(cfg, n)
    tx = make_optimizer(cfg, steps)
    state = init_state(init_params, tx, cfg.train.ema)
    state = jax.device_put(state, parallel.replicated(mesh))
    mngr = checkpoint_manager(ckpt_dir)
    start = mngr.latest_step()
    if start is not None:
        state = mngr.restore(start, args=ocp.args.StandardRestore(state))
        log.info('generation %d: resumed training at step %d/%d', generation, start, steps)
    start = start or 0
    compiled = {} if compiled is None else compiled
    if steps not in compiled:  # the optimizer's schedule depends on the step count
        compiled[steps] = make_train_step(graphdef, tx, diffusion.linear_alphas_cumprod(
            cfg.diffusion.num_steps, cfg.diffusion.beta_start, cfg.diffusion.beta_end), cfg, mesh)
    step_fn = compiled[steps]
    gen_key = jax.random.fold_in(jax.random.key(cfg.seed), generation)
    labels = np.zeros(n, np.int32) if labels is None else labels.astype(np.int32)
    b = cfg.train.batch_size
    losses, t0, t_log, info = [], time.time(), time.time(), dict(stopped=False)
    try:
        for step in range(start, steps):
            idx = batch_indices(n, b, step, cfg.seed, generation)
            state, loss = step_fn(state, parallel.shard_batch(mesh, images[idx]),
                                  parallel.shard_batch(mesh, labels[idx]), gen_key)
            done, stop = step + 1, should_stop()
            save = done % cfg.train.ckpt_every == 0 or done == steps or stop
            if not (save or done % cfg.train.log_every == 0):
                continue  # no host sync between progress lines
            lv = float(loss)
            if not np.isfinite(lv):  # checked before any save: the last checkpoint stays good
                raise FloatingPointError(
                    f'generation {generation}: non-finite loss {lv} at step {done}; the last '
                    f'good checkpoint is in {ckpt_dir}; rerun with a lower --config.train.lr '
                    'to resume from it')
            losses.append((done, lv))
            if done % cfg.train.log_every == 0 or done == steps:
                rate = (done - (losses[-2][0] if len(losses) > 1 else start)) * b / max(
                    time.time() - t_log, 1e-9)
                log.info('generation %d step %d/%d loss %.4f %.1f img/s', generation, done,
                         steps, lv, rate)
                t_log = time.time()
            if save:
                mngr.save(done, args=ocp.args.StandardSave(_saveable(state)))
            if stop:
                info['stopped'] = True
                break
    finally:  # an exception must not leave an async save half done
        mngr.wait_until_finished()
        mngr.close()
    info.update(steps=steps, losses=losses, seconds=time.time() - t0,
                final_loss=float(state['loss']))
    return state, info

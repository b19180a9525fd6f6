"""What training one generation's model is made of: state, the sharded step, EMA, the batch order,
orbax checkpoints. engine.Engine.train runs the steps.

The train state is a plain pytree {params, opt_state, ema, ema_count, step, loss}; the model
graph stays outside it, so one compiled step serves every generation. The step's key is
fold_in(generation_key, step) and the batch order depends only on (seed, generation, step), so a
resumed run takes exactly the steps an uninterrupted one would.
"""
from __future__ import annotations

import math

import numpy as np
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from flax import nnx

from collapse_jax import diffusion, parallel, streams, unet
from collapse_jax.data import need


DTYPES = ('auto', 'float32', 'bfloat16')
FEEDS = ('device', 'host')


def compute_dtype(cfg, platform: str | None = None) -> str:
    """model.dtype resolved for `platform` (default: the backend JAX runs on): 'auto' is bfloat16
    on GPU and TPU (their matrix units' rate), float32 on the CPU (XLA:CPU's bf16 convolutions are
    slow). Parameters, optimizer state and EMA stay float32 in every case."""
    if cfg.model.dtype != 'auto':
        return cfg.model.dtype
    return 'float32' if (platform or jax.default_backend()) == 'cpu' else 'bfloat16'


def make_model(cfg, seed, platform=None):
    """The configured UNet, weights from `seed` (aot.py and the FLOP count build it abstractly)."""
    return unet.make_unet(cfg.model.preset, in_channels=cfg.data.channels,
                          layers_per_block=cfg.model.layers_per_block,
                          num_classes=cfg.model.num_classes,
                          dtype=jnp.bfloat16 if compute_dtype(cfg, platform) == 'bfloat16' else None,
                          seed=seed)


def model_graph(cfg, platform: str | None = None):
    """The UNet's graph, with no weights made (every run supplies its own)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: make_model(cfg, 0, platform)))
    return graphdef


def init_params(cfg):
    """The run's initial weights, from its own seed (streams 'init')."""
    _, state = nnx.split(make_model(cfg, streams.jax_key(cfg.seed, 'init')))
    return nnx.to_pure_dict(state)


# train fields that the compiled step does not depend on (the rest key the compiled step)
NOT_COMPILED = ('log_every', 'ckpt_every', 'steps_per_call')  # calls key the step apart


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
    need(m.dtype in DTYPES, f'model.dtype={m.dtype!r}; allowed: {", ".join(DTYPES)}')
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
    for field in ('log_every', 'ckpt_every', 'steps_per_call'):
        need(t[field] > 0, f'train.{field}={t[field]}; must be > 0')
    need(t.feed in FEEDS, f'train.feed={t.feed!r}; allowed: {", ".join(FEEDS)}')
    need(t.feed == 'device' or t.steps_per_call == 1,
         f"train.steps_per_call={t.steps_per_call} needs train.feed='device'; allowed with "
         "'host': 1")


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


def make_train_step(graphdef, tx, alphas_cumprod, cfg, mesh, calls: int = 1):
    """The compiled train step; state replicated and donated, the batch sharded over 'data'.

    train.feed 'host': step(state, images_u8 [b, h, w, c], labels [b], gen_key): the caller
    gathers and transfers each batch. train.feed 'device': step(state, images_u8 [n, h*w*c],
    labels [n], rows [calls, b], gen_key): D_g stays on the devices (replicated, as rows of
    pixels: a layout the TPU gathers from without a padded copy) and each batch is gathered
    there; `calls` steps run in one call (lax.scan). One step a call gives the host feed's bits;
    several give the same steps in another program, equal up to float rounding (the loop body is
    compiled apart), and a resumed run the bits of an uninterrupted one (its calls fall on the
    same steps). Both return (state, {'loss', 'grad_norm'}) of the last step; grad_norm is the
    global norm before clipping. The state keeps the last loss too, so a resumed run can report
    it."""
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
    if cfg.train.feed == 'host':
        return jax.jit(step, in_shardings=(rep, dat, dat, rep), out_shardings=(rep, rep),
                       donate_argnums=0)

    shape = (cfg.data.resolution, cfg.data.resolution, cfg.data.channels)

    def steps(state, images, labels, rows, gen_key):
        def one(state, r):  # the rows are replicated: each device keeps its part of the batch
            # the barrier keeps the gather out of the step's fusions: the same program, so the
            # same bits, as a batch fed from the host
            x, y = jax.lax.optimization_barrier((
                jax.lax.with_sharding_constraint(images[r].reshape((-1,) + shape), dat),
                jax.lax.with_sharding_constraint(labels[r], dat)))
            return step(state, x, y, gen_key)
        if calls == 1:
            return one(state, rows[0])
        # XLA:CPU runs the UNet's step inside a rolled loop 26x slower (measured: 1.3 against
        # 33.8 img/s, UNet48 batch 32), so there the loop is unrolled
        cpu = mesh.devices.flat[0].platform == 'cpu'
        state, metrics = jax.lax.scan(one, state, rows, unroll=cpu)
        return state, jax.tree.map(lambda m: m[-1], metrics)
    return jax.jit(steps, in_shardings=(rep, rep, rep, rep, rep), out_shardings=(rep, rep),
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


def calls(start: int, steps: int, per_call: int, is_end):
    """(first step, steps in the call) of each call from `start`: `per_call` steps, unless a
    step that logs, saves or runs a hook (`is_end(done)`) would fall inside the call; then one at
    a time until it has passed. So each such step ends a call."""
    s = start
    while s < steps:
        k = per_call if s + per_call <= steps and not any(
            is_end(d) for d in range(s + 1, s + per_call)) else 1
        yield s, k
        s += k


def saveable(state):
    """One process: hand orbax a host copy (one slice per leaf instead of one per device, several
    times faster for small models). Several processes: the sharded arrays, which orbax gathers."""
    return jax.device_get(state) if jax.process_count() == 1 else state


def checkpoint_manager(directory, keep: int = 1):
    return ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

"""DDPM: the noise schedule, the epsilon-prediction loss and the ancestral sampler.

The sampler reproduces diffusers' `DDPMScheduler.step` ("leading" respacing, optional clipping of
the predicted x0, `fixed_small` or `fixed_large` variance) and runs the whole reverse chain inside
one `lax.fori_loop`. Model parameters are an argument, so one compilation serves every generation.
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from flax import nnx

from collapse_jax import data, parallel
from collapse_jax.data import need


def linear_alphas_cumprod(num_steps=1000, beta_start=1e-4, beta_end=0.02) -> np.ndarray:
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def alphas_cumprod(cfg) -> np.ndarray:
    """The configured schedule (diffusion section)."""
    f = cfg.diffusion
    return linear_alphas_cumprod(f.num_steps, f.beta_start, f.beta_end)


def to_uint8(x):
    """float [-1, 1] -> uint8, rounded as diffusers' pipelines do."""
    return jnp.round(jnp.clip((x + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def make_loss_fn(graphdef, alphas_cumprod, *, num_classes=0, label_dropout=0.0):
    """loss(params, images_u8, labels, key) -> scalar MSE between predicted and true noise."""
    acp = jnp.asarray(alphas_cumprod, jnp.float32)

    def loss_fn(params, images_u8, labels, key):
        x0 = data.to_pm1(images_u8, jnp)  # uint8 [0, 255] -> float32 [-1, 1]
        kt, kn, kd = jax.random.split(key, 3)
        t = jax.random.randint(kt, (x0.shape[0],), 0, acp.shape[0])
        noise = jax.random.normal(kn, x0.shape, jnp.float32)
        a = acp[t][:, None, None, None]
        xt = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise
        y = None
        if num_classes:
            drop = jax.random.bernoulli(kd, label_dropout, labels.shape)
            y = jnp.where(drop, num_classes, labels)
        eps = nnx.merge(graphdef, params)(xt, t, y)
        return jnp.mean((eps - noise) ** 2)

    return loss_fn


def sampler_coefficients(alphas_cumprod, steps, variance='fixed_small'):
    """Per-step constants of the respaced reverse chain, as diffusers computes them."""
    num_train = len(alphas_cumprod)
    _check_sampler(steps, variance, num_train)
    ratio = num_train // steps
    ts = (np.arange(steps) * ratio)[::-1]
    a_t = alphas_cumprod[ts]
    a_prev = np.where(ts - ratio >= 0, alphas_cumprod[np.maximum(ts - ratio, 0)], 1.0)
    beta_t = 1.0 - a_t / a_prev
    var = (np.maximum((1 - a_prev) / (1 - a_t) * beta_t, 1e-20) if variance == 'fixed_small'
           else beta_t)
    std = np.where(ts > 0, np.sqrt(var), 0.0)
    c = dict(t=ts, sqrt_a=np.sqrt(a_t), sqrt_1ma=np.sqrt(1 - a_t),
             c_x0=np.sqrt(a_prev) * beta_t / (1 - a_t),
             c_xt=np.sqrt(a_t / a_prev) * (1 - a_prev) / (1 - a_t), std=std)
    return {k: jnp.asarray(v, jnp.int32 if k == 't' else jnp.float32) for k, v in c.items()}


VARIANCES = ('fixed_small', 'fixed_large')


def _check_sampler(steps, variance, num_train):
    need(1 <= steps <= num_train, f'sample.steps={steps}; allowed: 1..{num_train}')
    need(variance in VARIANCES, f'sample.variance={variance!r}; allowed: {", ".join(VARIANCES)}')


def check_config(cfg) -> None:
    """The diffusion and sample sections' own checks."""
    f, s = cfg.diffusion, cfg.sample
    need(f.num_steps >= 1, f'diffusion.num_steps={f.num_steps}; must be >= 1')
    need(0 < f.beta_start < f.beta_end < 1, f'diffusion.beta_start={f.beta_start}, '
         f'diffusion.beta_end={f.beta_end}; need 0 < beta_start < beta_end < 1')
    _check_sampler(s.steps, s.variance, f.num_steps)
    need(s.batch_size > 0, f'sample.batch_size={s.batch_size}; must be > 0')
    parallel.check_divisible(s.batch_size, 'sample.batch_size')
    need(s.guidance >= 0, f'sample.guidance={s.guidance}; must be >= 0')


def make_sampler(graphdef, chain, *, shape, clip_x0=True, guidance=1.0, num_classes=0,
                 sharding=None):
    """Returns sample(params, key, labels) -> (uint8 images [batch, *shape], finite [batch]), one
    compiled program; `chain` is the respaced chain (sampler_coefficients: its steps and
    variance). `finite` is False for an image whose chain produced NaN or inf (its uint8
    form would be meaningless), so callers never score or select it silently.

    `guidance` w mixes eps = eps_null + w (eps_cond - eps_null) for class-conditional models
    (w = 1 is plain conditional sampling). `sharding` splits the batch over devices.
    """
    c, steps = chain, int(chain['t'].shape[0])
    cfg = bool(num_classes) and guidance != 1.0

    def eps_fn(model, x, t, labels):
        tt = jnp.full((x.shape[0],), t)
        if not num_classes:
            return model(x, tt)
        if not cfg:
            return model(x, tt, labels)
        null = jnp.full_like(labels, num_classes)
        e = model(jnp.concatenate([x, x]), jnp.concatenate([tt, tt]),
                  jnp.concatenate([labels, null]))
        e_cond, e_null = jnp.split(e, 2)
        return e_null + guidance * (e_cond - e_null)

    def sample(params, key, labels):
        model = nnx.merge(graphdef, params)
        constrain = (lambda z: jax.lax.with_sharding_constraint(z, sharding)) if sharding else (
            lambda z: z)
        x = constrain(jax.random.normal(jax.random.fold_in(key, steps), (labels.shape[0], *shape),
                                        jnp.float32))

        def body(i, x):
            eps = eps_fn(model, x, c['t'][i], labels)
            x0 = (x - c['sqrt_1ma'][i] * eps) / c['sqrt_a'][i]
            if clip_x0:
                x0 = jnp.clip(x0, -1.0, 1.0)
            z = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
            return constrain(c['c_x0'][i] * x0 + c['c_xt'][i] * x + c['std'][i] * z)

        x = jax.lax.fori_loop(0, steps, body, x)
        return to_uint8(x), jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))

    return jax.jit(sample)

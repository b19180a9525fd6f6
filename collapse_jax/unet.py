"""A Flax NNX UNet in the layout of diffusers' `UNet2DModel`.

Module and parameter names follow diffusers (conv_in, time_embedding, down_blocks, mid_block,
up_blocks, conv_norm_out, conv_out) so that the parameter count matches theirs exactly and a
PyTorch checkpoint maps onto ours one tensor at a time. Images are NHWC.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

# widths per level, which down levels carry attention, GroupNorm groups.
# The paper's models have six levels with attention at the fifth down (and second up) level.
PRESETS = {
    'UNet32': dict(widths=(32, 32, 64, 64, 128, 128), attention=(0, 0, 0, 0, 1, 0), groups=16),
    'UNet48': dict(widths=(48, 48, 96, 96, 192, 192), attention=(0, 0, 0, 0, 1, 0), groups=16),
    'UNet64': dict(widths=(64, 64, 128, 128, 256, 256), attention=(0, 0, 0, 0, 1, 0), groups=16),
    'UNet128': dict(widths=(128, 128, 256, 256, 512, 512), attention=(0, 0, 0, 0, 1, 0), groups=16),
    # CPU presets: three levels (for 16x16 or 32x32 inputs).
    'small': dict(widths=(32, 64, 64), attention=(0, 1, 0), groups=16),
    'tiny': dict(widths=(16, 32, 32), attention=(0, 1, 0), groups=8),
}


def timestep_embedding(t, dim):
    """diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _conv(cin, cout, rngs, kernel=3, stride=1, dtype=None):
    pad = kernel // 2
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                    dtype=dtype, rngs=rngs)


class GroupNorm(nnx.GroupNorm):
    """nnx.GroupNorm, with the same parameters and derivatives. Its forward value on the CPU comes
    from `cpu_group_norm`; on GPU and TPU, and for every derivative (a custom_jvp whose rule is
    nnx.GroupNorm's own), the programs are nnx.GroupNorm's."""

    def __call__(self, x):
        graphdef, state = nnx.split(self)
        return _group_norm(graphdef, state, x)


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _group_norm(graphdef, state, x):
    m = nnx.merge(graphdef, state)
    return jax.lax.platform_dependent(x, cpu=partial(cpu_group_norm, m),
                                      default=partial(nnx.GroupNorm.__call__, m))


@_group_norm.defjvp
def _group_norm_jvp(graphdef, primals, tangents):
    return jax.jvp(lambda state, x: nnx.GroupNorm.__call__(nnx.merge(graphdef, state), x),
                   primals, tangents)


def cpu_group_norm(m: nnx.GroupNorm, x):
    """nnx.GroupNorm `m` of x [b, ..., c], laid out for XLA:CPU: the statistics (mean and E[x^2]
    in float32, as nnx's) are summed per channel over the pixels first, a reduction along a major
    axis with the channels minor, then over each group's few channels. XLA:CPU reduces nnx's
    [b, ..., groups, c / groups] layout over its inner axes slowly. The same values within float
    rounding; the `tiny` UNet's forward (the CPU configs' sampler) runs 1.17-1.19x faster with it,
    `small`'s 1.03-1.11x, UNet48's as before (docs/benchmarks.md)."""
    x, scale, bias = m.promote_dtype((x, m.scale[...], m.bias[...]), dtype=m.dtype)
    b, c, g = x.shape[0], x.shape[-1], m.num_groups
    xf = x.astype(jnp.float32).reshape(b, -1, c)
    n = xf.shape[1] * (c // g)

    def group_mean(a):  # per-channel sums [b, c] -> each channel's group mean, [b, 1, c]
        return jnp.repeat(a.reshape(b, g, -1).sum(-1) / n, c // g, axis=1)[:, None]
    mean = group_mean(xf.sum(1))
    inv = jax.lax.rsqrt(jnp.maximum(group_mean((xf * xf).sum(1)) - mean * mean, 0.0) + m.epsilon)
    return (((xf - mean) * inv) * scale + bias).astype(x.dtype).reshape(x.shape)


class ResnetBlock2D(nnx.Module):
    def __init__(self, cin, cout, temb, groups, rngs, dtype=None):
        self.norm1 = GroupNorm(cin, num_groups=groups, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.conv1 = _conv(cin, cout, rngs, dtype=dtype)
        self.time_emb_proj = nnx.Linear(temb, cout, dtype=dtype, rngs=rngs)
        self.norm2 = GroupNorm(cout, num_groups=groups, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(cout, cout, rngs, dtype=dtype)
        self.conv_shortcut = _conv(cin, cout, rngs, kernel=1, dtype=dtype) if cin != cout else None

    def __call__(self, x, temb):
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = h + self.time_emb_proj(nnx.silu(temb))[:, None, None, :]
        h = self.conv2(nnx.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nnx.Module):
    """diffusers `Attention` as built for UNet2DModel: GroupNorm, q/k/v/out projections, residual."""

    def __init__(self, ch, groups, rngs, head_dim=8, dtype=None):
        self.heads = max(ch // head_dim, 1)
        self.group_norm = GroupNorm(ch, num_groups=groups, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.to_q = nnx.Linear(ch, ch, dtype=dtype, rngs=rngs)
        self.to_k = nnx.Linear(ch, ch, dtype=dtype, rngs=rngs)
        self.to_v = nnx.Linear(ch, ch, dtype=dtype, rngs=rngs)
        self.to_out = nnx.Linear(ch, ch, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        b, h, w, c = x.shape
        y = self.group_norm(x).reshape(b, h * w, c)
        split = lambda z: z.reshape(b, h * w, self.heads, c // self.heads)
        q, k, v = split(self.to_q(y)), split(self.to_k(y)), split(self.to_v(y))
        y = jax.lax.platform_dependent(q, k, v, cpu=cpu_attention,
                                       default=jax.nn.dot_product_attention)
        return x + self.to_out(y.reshape(b, h * w, c)).reshape(b, h, w, c)


def cpu_attention(q, k, v):
    """jax.nn.dot_product_attention(q, k, v) for (batch, tokens, heads, head_dim), laid out for
    XLA:CPU: heads lead, keys are pre-transposed so both products are plain batched matmuls, and
    the softmax's division comes after the value product (on head_dim columns, not on tokens).
    The same numbers within float rounding; the 'small' preset's forward runs 1.25-1.6x faster
    with it (docs/benchmarks.md). Lowered on the CPU only: GPU and TPU
    programs keep dot_product_attention (Attention.__call__ uses lax.platform_dependent)."""
    f32 = jnp.float32  # logits and softmax in float32, as in dot_product_attention
    q, k, v = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)
    s = jnp.matmul(q, k, preferred_element_type=f32) * (1 / math.sqrt(q.shape[-1]))
    e = jnp.exp(s - jax.lax.stop_gradient(s.max(-1, keepdims=True)))  # (b, n, t, s)
    o = jnp.matmul(e.astype(v.dtype), v, preferred_element_type=f32) / e.sum(-1, keepdims=True)
    return o.transpose(0, 2, 1, 3).astype(v.dtype)


class Level(nnx.Module):
    """One down or up level: resnets (each optionally followed by attention), then a resampler."""

    def __init__(self, cins, cout, temb, groups, attn, resample, rngs, dtype=None):
        self.resnets = nnx.List([ResnetBlock2D(c, cout, temb, groups, rngs, dtype) for c in cins])
        self.attentions = nnx.List(
            [Attention(cout, groups, rngs, dtype=dtype) for _ in cins] if attn else [])
        # down: stride-2 conv (diffusers `downsamplers`); up: nearest x2 then conv (`upsamplers`).
        self.sampler = (_conv(cout, cout, rngs, stride=2 if resample == 'down' else 1, dtype=dtype)
                        if resample else None)


class UNet(nnx.Module):
    """Predicts the noise eps(x_t, t[, y]). `num_classes > 0` adds a class embedding with one extra
    null label (index num_classes) for classifier-free guidance."""

    def __init__(self, widths, attention, groups, *, in_channels=3, layers_per_block=2,
                 num_classes=0, dtype=None, rngs: nnx.Rngs):
        widths, attention = tuple(widths), tuple(bool(a) for a in attention)
        assert len(widths) == len(attention)
        temb = 4 * widths[0]
        self.widths, self.num_classes, self.dtype = widths, num_classes, dtype
        self.time_linear_1 = nnx.Linear(widths[0], temb, rngs=rngs)
        self.time_linear_2 = nnx.Linear(temb, temb, rngs=rngs)
        self.class_embedding = nnx.Embed(num_classes + 1, temb, rngs=rngs) if num_classes else None
        self.conv_in = _conv(in_channels, widths[0], rngs, dtype=dtype)
        down, cin = [], widths[0]
        for i, (cout, attn) in enumerate(zip(widths, attention)):
            last = i == len(widths) - 1
            cins = [cin] + [cout] * (layers_per_block - 1)
            down.append(Level(cins, cout, temb, groups, attn, None if last else 'down', rngs, dtype))
            cin = cout
        self.down_blocks = nnx.List(down)
        self.mid_resnets = nnx.List([ResnetBlock2D(cin, cin, temb, groups, rngs, dtype)
                                     for _ in range(2)])
        self.mid_attention = Attention(cin, groups, rngs, dtype=dtype)
        # skip channels in the order they are consumed (last pushed, first popped)
        skips = [widths[0]]
        for i, c in enumerate(widths):
            skips += [c] * layers_per_block + ([c] if i < len(widths) - 1 else [])
        up, rw, prev = [], widths[::-1], widths[-1]
        for i, (cout, attn) in enumerate(zip(rw, attention[::-1])):
            cins = []
            for j in range(layers_per_block + 1):
                cins.append((prev if j == 0 else cout) + skips.pop())
            up.append(Level(cins, cout, temb, groups, attn,
                            None if i == len(rw) - 1 else 'up', rngs, dtype))
            prev = cout
        self.up_blocks = nnx.List(up)
        self.conv_norm_out = GroupNorm(widths[0], num_groups=groups, epsilon=1e-5, dtype=dtype,
                                           rngs=rngs)
        self.conv_out = _conv(widths[0], in_channels, rngs, dtype=dtype)

    def __call__(self, x, t, y=None):
        emb = self.time_linear_2(nnx.silu(self.time_linear_1(
            timestep_embedding(t, self.widths[0]))))
        if self.class_embedding is not None:
            if y is None:
                y = jnp.full((x.shape[0],), self.num_classes, jnp.int32)
            emb = emb + self.class_embedding(y)
        if self.dtype is not None:
            x, emb = x.astype(self.dtype), emb.astype(self.dtype)
        h = self.conv_in(x)
        skips = [h]
        for level in self.down_blocks:
            for i, res in enumerate(level.resnets):
                h = res(h, emb)
                if level.attentions:
                    h = level.attentions[i](h)
                skips.append(h)
            if level.sampler is not None:
                h = level.sampler(h)
                skips.append(h)
        h = self.mid_resnets[0](h, emb)
        h = self.mid_attention(h)
        h = self.mid_resnets[1](h, emb)
        for level in self.up_blocks:
            for i, res in enumerate(level.resnets):
                h = res(jnp.concatenate([h, skips.pop()], axis=-1), emb)
                if level.attentions:
                    h = level.attentions[i](h)
            if level.sampler is not None:
                h = level.sampler(jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))
        h = self.conv_out(nnx.silu(self.conv_norm_out(h)))
        return h.astype(jnp.float32)


def make_unet(preset, *, in_channels, layers_per_block=2, num_classes=0, dtype=None, seed=0):
    """The preset's UNet; `seed` (an int or a JAX key) seeds nnx.Rngs for its weights."""
    if preset not in PRESETS:
        raise ValueError(f'model.preset={preset!r}; allowed: {", ".join(PRESETS)}')
    p = PRESETS[preset]
    return UNet(p['widths'], p['attention'], p['groups'], in_channels=in_channels,
                layers_per_block=layers_per_block, num_classes=num_classes, dtype=dtype,
                rngs=nnx.Rngs(seed))


def count_params(model) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _diffusers_key(path) -> str:
    """Our parameter path -> the diffusers state-dict key."""
    names = [str(p) for p in path]
    rename = {'time_linear_1': 'time_embedding.linear_1', 'time_linear_2': 'time_embedding.linear_2',
              'mid_resnets': 'mid_block.resnets', 'mid_attention': 'mid_block.attentions.0',
              'to_out': 'to_out.0', 'sampler': ('downsamplers' if names[0] == 'down_blocks'
                                                else 'upsamplers') + '.0.conv'}
    leaf = 'bias' if names[-1] == 'bias' else 'weight'
    return '.'.join([rename.get(m, m) for m in names[:-1]] + [leaf])


def params_from_diffusers(params, state_dict):
    """Maps a diffusers `UNet2DModel` state dict (name -> numpy array) onto our parameter pytree
    (a pure dict); every tensor must be used exactly once."""
    from collapse_jax.features.torch_weights import torch_to_tree
    return torch_to_tree(params, state_dict, key_of=_diffusers_key)

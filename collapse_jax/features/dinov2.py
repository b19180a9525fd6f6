"""DINOv2 ViT-S/14's 384-d CLS features, the paper's selection space, as a Flax NNX port whose
parameter names mirror the PyTorch modules."""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from flax import nnx


class LayerScale(nnx.Module):
    def __init__(self, dim):
        self.gamma = nnx.Param(jnp.ones((dim,)))

    def __call__(self, x):
        return x * self.gamma[...]


class ViTAttention(nnx.Module):
    def __init__(self, dim, heads, *, rngs):
        self.heads = heads
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).transpose(2, 0, 3, 1, 4)
        a = jax.nn.softmax(q @ k.swapaxes(-1, -2) * (d // self.heads) ** -0.5, axis=-1)
        return self.proj((a @ v).transpose(0, 2, 1, 3).reshape(b, n, d))


class Mlp(nnx.Module):
    def __init__(self, dim, hidden, *, rngs):
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class ViTBlock(nnx.Module):
    def __init__(self, dim, heads, *, rngs):
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        self.attn = ViTAttention(dim, heads, rngs=rngs)
        self.ls1 = LayerScale(dim)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        self.mlp = Mlp(dim, 4 * dim, rngs=rngs)
        self.ls2 = LayerScale(dim)

    def __call__(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nnx.Module):
    def __init__(self, patch, dim, *, rngs):
        self.proj = nnx.Conv(3, dim, (patch, patch), strides=patch, padding='VALID', rngs=rngs)

    def __call__(self, x):
        x = self.proj(x)
        return x.reshape(x.shape[0], -1, x.shape[-1])


class DINOv2(nnx.Module):
    """DINOv2 ViT-S/14 (facebookresearch/dinov2 names) at 224x224: 16x16 patches + CLS."""
    size, patch, resize = 224, 14, 256
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, dim=384, depth=12, heads=6, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        grid = self.size // self.patch
        self.patch_embed = PatchEmbed(self.patch, dim, rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, dim)))
        self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1 + grid ** 2, dim)))
        self.blocks = nnx.List([ViTBlock(dim, heads, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)

    def __call__(self, x):
        """x: normalized float images [b, 224, 224, 3] -> CLS features [b, dim]."""
        x = self.patch_embed(x)
        cls = jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], 1) + self.pos_embed[...]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    @classmethod
    def preprocess(cls, x):
        """uint8 [b, h, w, c] -> ImageNet-normalized 224x224 as the image processor the
        paper's features came from: the shorter side resized to 256 (bicubic, PIL's Keys
        a = -0.5), then the centre 224x224 crop. tau0 = 60 was tuned on those features."""
        x = jnp.asarray(x, jnp.float32) / 255.0
        x = jnp.broadcast_to(x, x.shape[:3] + (3,)) if x.shape[-1] == 1 else x
        h, w = x.shape[1:3]
        nh, nw = round(cls.resize * h / min(h, w)), round(cls.resize * w / min(h, w))
        x = jax.image.resize(x, (x.shape[0], nh, nw, 3), 'cubic')
        t, l = (nh - cls.size) // 2, (nw - cls.size) // 2
        x = x[:, t:t + cls.size, l:l + cls.size]
        return (x - jnp.asarray(cls.mean)) / jnp.asarray(cls.std)


def _resize_pos_embed(key, w, shape):
    """DINOv2 checkpoints carry positions for 37x37 patches (518 px): resample the grid to ours
    bicubically (close to, not bit-identical with, PyTorch's bicubic in the original code)."""
    if key != 'pos_embed' or w.ndim != 3:
        return w
    src, dst = int(round((w.shape[1] - 1) ** 0.5)), int(round((shape[1] - 1) ** 0.5))
    grid = jax.image.resize(w[0, 1:].reshape(src, src, -1), (dst, dst, w.shape[-1]), 'cubic')
    return np.concatenate([w[:, :1], np.asarray(grid).reshape(1, dst * dst, -1)], 1)

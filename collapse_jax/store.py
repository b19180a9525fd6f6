"""Where a training set's images come from. A `Source` is D_0's real images, fresh real images,
or the pool S_i of generation i; its `code` is what TrainSet.source holds. A `Store` holds each
source's images and their features in the selection's space, made once. `RunStore` is a run's:
pools and evaluation samples read from its directory (or kept from the phase that made them),
a pool's features kept on disk beside it. `ArrayStore` holds plain arrays: a held-out set
repeats D_{g+1}'s construction on one (E_i and held-out real images standing in for S_i and
D_0), and tests build one in a line.
"""
from __future__ import annotations

import dataclasses

from collapse_jax import files


@dataclasses.dataclass(frozen=True, order=True)
class Source:
    code: int  # -1: D_0's real images, -2: fresh real images, i >= 0: the pool S_i

    @classmethod
    def pool(cls, i: int) -> 'Source':
        return cls(int(i))

    @property
    def is_pool(self) -> bool:
        return self.code >= 0

    @property
    def name(self) -> str:
        return {-1: 'real', -2: 'fresh'}.get(self.code, f'S{self.code}')

    def __repr__(self):
        return self.name


REAL, FRESH = Source(-1), Source(-2)


class Store:
    """A run's sources at its sizes: n (N, the size of D_0 and of a training set), pool_size
    (S_g's size, N x pool_factor) and fresh_n (fresh real images in each D_{g+1}).
    featurize: images -> the selection's features."""

    def __init__(self, n: int, pool_size: int, featurize, fresh_n: int = 0):
        self.n, self.pool_size, self.featurize, self.fresh_n = n, pool_size, featurize, fresh_n
        self._features = {}

    def images(self, src: Source):
        """(uint8 images, labels or None) of a source."""
        raise NotImplementedError

    def fresh(self, g: int):
        """(images, labels, rows) of the fresh real images that join D_{g+1}, or None."""
        return None

    def features(self, src: Source):
        """The selection space's features of every row of `src`, made once."""
        if src not in self._features:
            self._features[src] = self._make_features(src)
        return self._features[src]

    def _make_features(self, src):
        return self.featurize(self.images(src)[0])


class ArrayStore(Store):
    """Sources held as arrays: {Source: images or (images, labels)}; `fresh`: (images, labels,
    rows) for every D_{g+1}, or None; fresh_n: their count (default len(fresh[0])); `evals`:
    {g: E_g} for the Judge."""

    def __init__(self, sources: dict, *, n: int, pool_size: int = 0, featurize=None, fresh=None,
                 fresh_n=None, evals=None):
        from collapse_jax import features
        super().__init__(n, pool_size, featurize or features.pixel,
                         fresh_n if fresh_n is not None else 0 if fresh is None else len(fresh[0]))
        self._sources = {s: v if isinstance(v, tuple) else (v, None) for s, v in sources.items()}
        self._fresh, self._evals = fresh, evals or {}

    def images(self, src):
        return self._sources[src]

    def fresh(self, g):
        return self._fresh

    def eval(self, g):
        return self._evals.get(g)


class RunStore(Store):
    """One run's sources: D_0 and the fresh images from its data.RealSplit, the pools and
    evaluation samples from its layout.RunDir (or from `put`, in the process that sampled them).
    A pool's features (outside pixel space) are kept at gen_XXX/features_<space>.npy, written by
    the `writer` process, for every later generation that reads them (accumulate's especially)
    and for a resumed run."""

    def __init__(self, rundir, real, featurize, pool_size: int, writer: bool):
        super().__init__(real.n, pool_size, featurize, real.fresh_n)
        self.dir, self.real, self.writer = rundir, real, writer
        self._pools, self._evals = {}, {}

    def put(self, g, pool, labels, eval_sample):
        """Generation g's pool S_g and evaluation sample E_g, as the sampler made them."""
        self._pools[g], self._evals[g] = (pool, labels), eval_sample

    def images(self, src):
        if src == REAL:
            return self.real.d0()
        if src.code not in self._pools:
            self._pools[src.code] = self.dir.gen(src.code).load_pool()
        return self._pools[src.code]

    def eval(self, g):
        """E_g (uint8), the evaluation sample drawn apart from the pool; None if eval_n = 0."""
        if g not in self._evals:
            self._evals[g] = self.dir.gen(g).load_eval()
        return self._evals[g]

    def fresh(self, g):
        if not self.fresh_n:
            return None
        rows = self.real.fresh_rows(g)
        return (self.real.images[rows],
                None if self.real.labels is None else self.real.labels[rows], rows)

    def _make_features(self, src):
        name = self.featurize.name
        if name == 'pixel' or not src.is_pool:
            return super()._make_features(src)
        path = self.dir.gen(src.code).file(f'features_{name}.npy')
        if files.exists(path):
            return files.load_npy(path, 'delete it: it is a cache, remade from the pool',
                                  mmap_mode='r')
        feats = super()._make_features(src)
        if self.writer:
            files.save_npy(path, feats)
        return feats

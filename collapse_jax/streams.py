"""Every random stream of a run, by name: the one place that says where randomness comes from.

  numpy_rng(seed, name, *index) -> np.random.Generator   host-side choices (orders, subsets)
  jax_key(seed, name, *index)   -> jax.random.key         device-side noise (training, sampling)

| name        | index               | drives                                                   |
|-------------|---------------------|----------------------------------------------------------|
| real_order  | ()                  | the order real images are used in: D_0, fresh, held out   |
| batches     | (generation, epoch) | the epoch's permutation of D_g (train.batch_indices)      |
| candidates  | (generation,)       | the shuffled candidate rows for D_{g+1} (paradigms)       |
| selection   | (generation,)       | the selection rule's own seed (random, greedy start, ...) |
| mirror      | (generation,)       | the same two choices for the held-out mirror of D_{g+1}   |
| parents     | (parents,)          | the entropy intervention's draws of P_K: D, then H        |
| init        | ()                  | the UNet's initial weights (nnx.Rngs draws fold_in(it, i)) |
| train       | (generation,)       | a generation's training key; the step is folded in after  |
| sample      | (generation,)       | a generation's pool S_g; the batch is folded in after     |
| eval        | (generation,)       | its evaluation sample E_g, drawn apart from the pool      |

Every stream starts from the run's own `seed` and has its own salt, so no two streams, and no
two seeds, share a state: NumPy streams seed `default_rng([salt, seed, *index])`, JAX streams
fold the salt, then each index, into `key(seed)`. The init stream is a key too: `nnx.Rngs(seed)`
would draw fold_in(key(seed), 0, 1, ...), which are the train, sample and eval streams' roots.
"""
from __future__ import annotations

import numpy as np

_NUMPY_SALT = {'real_order': 0, 'batches': 1, 'candidates': 2, 'selection': 3, 'mirror': 4,
               'parents': 5}
_JAX_SALT = {'train': 0, 'sample': 1, 'eval': 2, 'init': 3}
_INDEX = {'real_order': 0, 'batches': 2, 'candidates': 1, 'selection': 1, 'mirror': 1,
          'parents': 1, 'train': 1, 'sample': 1, 'eval': 1, 'init': 0}


def _check(name, table, index):
    if name not in table:
        raise ValueError(f'random stream {name!r}; allowed: {", ".join(table)}')
    if len(index) != _INDEX[name]:
        raise ValueError(f'random stream {name!r} takes {_INDEX[name]} indices, got {index}')


def numpy_rng(seed: int, name: str, *index: int) -> np.random.Generator:
    _check(name, _NUMPY_SALT, index)
    return np.random.default_rng([_NUMPY_SALT[name], int(seed), *map(int, index)])


def numpy_seed(seed: int, name: str, *index: int) -> int:
    """An int seed drawn from the stream, for APIs that take one (selection rules)."""
    return int(numpy_rng(seed, name, *index).integers(2 ** 31))


def jax_key(seed: int, name: str, *index: int):
    import jax  # here, so that host-only modules (data) can name their streams without JAX
    _check(name, _JAX_SALT, index)
    key = jax.random.fold_in(jax.random.key(int(seed)), _JAX_SALT[name])
    for i in index:
        key = jax.random.fold_in(key, int(i))
    return key

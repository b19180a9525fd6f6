"""Exact blocked k-nearest neighbours, the engine under every scoring measure.

Distances run in blocks of queries x references, so memory stays bounded at any n. Candidates come
from ||q||^2 + ||r||^2 - 2 q.r at HIGHEST precision on mean-centred data, then their distances are
recomputed directly as ||q - r||^2, so near-duplicates get exact distances (the expansion alone
loses them to cancellation). Self-matches are excluded by index, never by sort position. The
queries split over every local device (shard_map); uint8 travels as uint8.
"""
from __future__ import annotations

import functools
from functools import partial

import numpy as np
import jax
import jax.numpy as jnp

from collapse_jax import parallel

HIGHEST = jax.lax.Precision.HIGHEST


def _pad_rows(x, multiple):
    pad = (-x.shape[0]) % multiple
    return jnp.pad(x, ((0, pad), (0, 0))) if pad else x


def _merge(best_d, best_i, d, cols, kc):
    """The kc smallest of (best_d, best_i) and of the distance block d [rows, cols] (columns
    numbered by `cols`): d's own kc smallest first, then kc against kc (no [rows, kc + cols]
    copy)."""
    nd, pos = jax.lax.top_k(-d, kc)
    md, mpos = jax.lax.top_k(jnp.concatenate([-best_d, nd], 1), kc)
    return -md, jnp.take_along_axis(jnp.concatenate([best_i, cols[pos]], 1), mpos, 1)


_devices = parallel.local_devices  # one name, so that a test can pin it to one device


def knn(queries, refs, k: int = 1, exclude_self: bool = False, block_q: int = 512,
        block_r: int = 2048, devices=None):
    """Exact k nearest references of each query: (squared distances [nq, k] ascending, indices).

    `exclude_self` (queries is refs) drops each point's own index from its neighbours. The
    queries are split over `devices` (default: every local device), the references replicated;
    each query's arithmetic is the same on 1 device or many. uint8 inputs travel as uint8 and
    become float32 on the device."""
    devices = _devices(devices)
    if len(devices) == 1:
        return _knn(queries, refs, 0, k, exclude_self, block_q, block_r)
    queries = np.asarray(queries)
    nq, n_dev = queries.shape[0], len(devices)
    per = -(-nq // n_dev)
    q = np.concatenate([queries, np.zeros((per * n_dev - nq,) + queries.shape[1:],
                                          queries.dtype)])
    mesh = parallel.local_mesh(devices)
    place = lambda a, spec: jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))  # noqa
    d, i = sharded_knn(devices, k, exclude_self, block_q, block_r)(
        place(q, jax.sharding.PartitionSpec(parallel.ROWS)),
        place(np.asarray(refs), jax.sharding.PartitionSpec()))
    return d[:nq], i[:nq]


@functools.lru_cache(maxsize=None)
def sharded_knn(devices: tuple, k: int = 1, exclude_self: bool = False, block_q: int = 512,
                block_r: int = 2048):
    """The jitted scorer over `devices` (a tuple): (queries split on parallel.ROWS, refs
    replicated) -> (distances, indices), each device's queries on its own (aot.py compiles it)."""
    from jax.sharding import PartitionSpec as P
    rows = parallel.ROWS

    def local(q, r):  # this device's queries, numbered from its first global row
        offset = jax.lax.axis_index(rows) * q.shape[0]
        return _knn(q, r, offset, k, exclude_self, block_q, block_r)
    return jax.jit(jax.shard_map(local, mesh=parallel.local_mesh(devices),
                                 in_specs=(P(rows), P()), out_specs=(P(rows), P(rows)),
                                 check_vma=False))


@partial(jax.jit, static_argnames=('k', 'exclude_self', 'block_q', 'block_r'))
def _knn(queries, refs, q_offset, k: int = 1, exclude_self: bool = False, block_q: int = 512,
         block_r: int = 2048):
    """knn on one device; `q_offset` numbers the queries from there (exclude_self)."""
    queries = jnp.asarray(queries).astype(jnp.float32)
    refs = jnp.asarray(refs).astype(jnp.float32)
    nq, nr = queries.shape[0], refs.shape[0]
    kc = min(k + 1, nr - int(exclude_self))  # one spare candidate guards against near-ties
    if kc < k:
        raise ValueError(f'k={k} needs at least {k + int(exclude_self)} reference points, got {nr}')
    block_q, block_r = min(block_q, nq), min(block_r, nr)
    mu = jnp.mean(refs, axis=0)
    q, r = _pad_rows(queries - mu, block_q), _pad_rows(refs - mu, block_r)
    rn = jnp.where(jnp.arange(r.shape[0]) < nr, jnp.sum(r * r, axis=1), jnp.inf)
    r_blocks = r.reshape(-1, block_r, r.shape[1])
    rn_blocks = rn.reshape(-1, block_r)

    def one_query_block(args):
        qb, q0 = args
        qn = jnp.sum(qb * qb, axis=1)
        qidx = q_offset + q0 + jnp.arange(block_q)

        def scan_refs(carry, blk):
            best_d, best_i = carry
            rb, rnb, r0 = blk
            d = qn[:, None] + rnb[None] - 2.0 * jnp.matmul(qb, rb.T, precision=HIGHEST)
            ridx = r0 + jnp.arange(block_r)
            if exclude_self:
                d = jnp.where(qidx[:, None] == ridx[None], jnp.inf, d)
            return _merge(best_d, best_i, jnp.maximum(d, 0.0), ridx, kc), None

        init = (jnp.full((block_q, kc), jnp.inf), jnp.zeros((block_q, kc), jnp.int32))
        starts = jnp.arange(r_blocks.shape[0], dtype=jnp.int32) * block_r
        (_, idx), _ = jax.lax.scan(scan_refs, init, (r_blocks, rn_blocks, starts))
        exact = jnp.sum((qb[:, None, :] - r[idx]) ** 2, axis=-1)  # direct, no cancellation
        order = jnp.argsort(exact, axis=1)[:, :k]
        return jnp.take_along_axis(exact, order, 1), jnp.take_along_axis(idx, order, 1)

    q_blocks = q.reshape(-1, block_q, q.shape[1])
    q_starts = jnp.arange(q_blocks.shape[0], dtype=jnp.int32) * block_q
    d, i = jax.lax.map(one_query_block, (q_blocks, q_starts))
    return d.reshape(-1, k)[:nq], i.reshape(-1, k)[:nq]


def self_knn(x, k: int = 1, block: int = 1024, devices=None):
    """knn(x, x, k, exclude_self=True). On one device at half the arithmetic (`_self_knn`); on
    several, the queries split over them (each device does 1/D of the full product)."""
    devices = _devices(devices)
    if len(devices) == 1:
        return _self_knn(x, k, block)
    return knn(x, x, k, exclude_self=True, devices=devices)


@partial(jax.jit, static_argnames=('k', 'block'))
def _self_knn(x, k: int = 1, block: int = 1024):
    """The distance matrix is symmetric, so each pair of blocks (I <= J) is multiplied once and
    serves the rows of I and of J. Same candidates-then-exact-recompute scheme as `knn`."""
    x = jnp.asarray(x).astype(jnp.float32)
    n, dim = x.shape
    kc = min(k + 1, n - 1)
    if kc < k:
        raise ValueError(f'k={k} needs at least {k + 1} points, got {n}')
    block = min(block, n)
    r = _pad_rows(x - jnp.mean(x, axis=0), block)
    nb = r.shape[0] // block
    rn = jnp.where(jnp.arange(r.shape[0]) < n, jnp.sum(r * r, axis=1), jnp.inf)
    pairs = np.array([(i, j) for i in range(nb) for j in range(i, nb)], np.int32)

    def merge(best, start, d, cols):
        bd, bi = (jax.lax.dynamic_slice(b, (start, 0), (block, kc)) for b in best)
        return tuple(jax.lax.dynamic_update_slice(b, m, (start, 0))
                     for b, m in zip(best, _merge(bd, bi, d, cols, kc)))

    def step(best, ij):
        i0, j0 = ij[0] * block, ij[1] * block
        qi, qj = (jax.lax.dynamic_slice(r, (s, 0), (block, dim)) for s in (i0, j0))
        ni, nj = (jax.lax.dynamic_slice(rn, (s,), (block,)) for s in (i0, j0))
        rows_i, rows_j = i0 + jnp.arange(block), j0 + jnp.arange(block)
        d = ni[:, None] + nj[None] - 2.0 * jnp.matmul(qi, qj.T, precision=HIGHEST)
        d = jnp.maximum(jnp.where(rows_i[:, None] == rows_j[None], jnp.inf, d), 0.0)
        best = merge(best, i0, d, rows_j)
        best = jax.lax.cond(ij[0] != ij[1], lambda b: merge(b, j0, d.T, rows_i), lambda b: b, best)
        return best, None

    init = (jnp.full((r.shape[0], kc), jnp.inf), jnp.zeros((r.shape[0], kc), jnp.int32))
    (_, idx), _ = jax.lax.scan(step, init, jnp.asarray(pairs))

    def exact_block(args):  # direct distances of the candidates, no cancellation
        start, ib = args  # rows sliced from r itself: a reshape would centre x a second time
        rb = jax.lax.dynamic_slice(r, (start, 0), (block, dim))
        e = jnp.sum((rb[:, None, :] - r[ib]) ** 2, axis=-1)
        order = jnp.argsort(e, axis=1)[:, :k]
        return jnp.take_along_axis(e, order, 1), jnp.take_along_axis(ib, order, 1)

    d, i = jax.lax.map(exact_block, (jnp.arange(nb, dtype=jnp.int32) * block,
                                     idx.reshape(nb, block, kc)))
    return d.reshape(-1, k)[:n], i.reshape(-1, k)[:n]

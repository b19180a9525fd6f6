"""Selection rules: which N of the candidates train the next generation (the paradigms, which
candidates there are, are in paradigms.py). Greedy farthest-point and the threshold-decay filter
run their whole loop on device.

Distances are Euclidean in the feature space handed in (pixels in [0, 255] by default). uint8
pixels take an integer path, int8 x int8 -> int32 products, exact on every backend (float32 rounds
squared distances above 2^24), so the picks are those of exact arithmetic, ties going to the
lowest index. Float features run in float64 (float32 on TPU); each record says which.
"""
from __future__ import annotations

import copy
from functools import partial

import numpy as np
import jax
import jax.numpy as jnp

from collapse_jax import parallel
from collapse_jax.data import Registry
from collapse_jax.scoring import unique_rows

HIGHEST = jax.lax.Precision.HIGHEST


def _integer(x) -> bool:
    """uint8 pixels whose squared distances fit int32 (d * 255^2 < 2^31, up to 33,025 values)
    take the integer path: exact on every backend."""
    return x.dtype == np.uint8 and x.shape[1] * 255 ** 2 < 2 ** 31


def _float_dtype():
    """Float features: float64 on CPU and GPU; TPUs only emulate it, slowly, so float32."""
    return jnp.float32 if jax.default_backend() == 'tpu' else jnp.float64


def arithmetic(features) -> str:
    """What the selection rules compute these features' distances in, for the record."""
    x = np.asarray(features).reshape(len(features), -1)
    if _integer(x):
        return 'int8 x int8 -> int32: exact on every backend'
    return ('float64' if _float_dtype() == jnp.float64 else
            'float32 (TPU: no float64; distances are rounded, near-ties may flip)')


def _place(x, devices):
    """(candidates on the device(s), their mesh or None). uint8 pixels ship as uint8 and become
    int8 (x - 128: the same distances) on the device; other features become float64 (float32 on
    TPU). Rows split over `devices` (default: every local device; XLA partitions the distance
    products and reductions), padded with zero rows to a multiple of their count. The rules
    never pick a padded row."""
    devices = parallel.local_devices(devices)
    x = jnp.asarray(x) if _integer(x) else jnp.asarray(x, _float_dtype())
    if len(devices) == 1:
        return x, None
    x = jnp.pad(x, ((0, (-x.shape[0]) % len(devices)), (0, 0)))
    mesh = parallel.local_mesh(devices)
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(parallel.ROWS))
    return jax.device_put(x, split), mesh


def _x64(x):
    """The context the rules run in: float64 enabled for float features off TPU."""
    return jax.enable_x64(not _integer(x) and _float_dtype() == jnp.float64)


def _prepare(x):
    """(working rows, accumulator dtype, the largest value): int8 rows with int32 products, or
    the float rows themselves."""
    if x.dtype == jnp.uint8:
        return (x.astype(jnp.int16) - 128).astype(jnp.int8), jnp.int32, jnp.iinfo(jnp.int32).max
    return x, x.dtype, jnp.inf


def _dot(a, b, acc):
    """a [n, d] . b [k, d]^T -> [n, k] in `acc` (int8 x int8 -> int32 is exact)."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=HIGHEST,
                               preferred_element_type=acc)


def _take(x, idx, mesh):
    """Rows `idx` of x. On a mesh, each device takes the rows it holds and one psum of len(idx)
    rows combines them, so no device ever gathers the whole candidate set."""
    if mesh is None:
        return x[idx]
    from jax.sharding import PartitionSpec as P
    acc = jnp.int32 if jnp.issubdtype(x.dtype, jnp.integer) else x.dtype

    def local(xl, idx):
        li = idx - jax.lax.axis_index(parallel.ROWS) * xl.shape[0]
        own = (li >= 0) & (li < xl.shape[0])
        rows = xl[jnp.clip(li, 0, xl.shape[0] - 1)].astype(acc)
        return jax.lax.psum(jnp.where(own[:, None], rows, 0), parallel.ROWS)
    return jax.shard_map(local, mesh=mesh, in_specs=(P(parallel.ROWS), P()), out_specs=P(),
                         check_vma=False)(x, idx).astype(x.dtype)


@partial(jax.jit, static_argnames=('n', 'mesh', 'block', 'top'))
def greedy_loop(x, n, first, valid, mesh=None, block: int = 32, top: int = 32):
    """Farthest-point traversal with lazy updates. The exact rule needs each pick's distance to
    every point, an n x d pass per pick that memory bandwidth bounds. Instead, every point keeps
    an upper bound `ub` of its distance to the chosen set (exact up to the last full update);
    the newest picks wait in `pend`, and every `block` picks one matrix product (compute-bound)
    brings all bounds up to date. Between updates, the `top` largest bounds are refreshed
    against the pending picks; if the best refreshed value beats the top-th bound, it beats
    every other point's true value too, so it is the exact argmax. Otherwise a full update runs
    now and the argmax is taken directly. Same picks as the plain loop, ties to the lowest index.
    x: uint8 [m, d] (integer path) or float [m, d]; rows from `valid` on are padding, never
    picked."""
    x, acc, big = _prepare(x)
    m = x.shape[0]
    top = min(top, m)
    sq = jnp.sum(x.astype(acc) ** 2, axis=1)

    def dists(rows, p, p_sq):  # squared distances [len(rows), block]; exact for integer data
        r, r_sq = (x, sq) if rows is None else (_take(x, rows, mesh), sq[rows])
        return jnp.maximum(r_sq[:, None] + p_sq[None] - 2 * _dot(r, p, acc), 0)

    def pending(s, rows):
        d = dists(rows, s['pend'], s['pend_sq'])
        return jnp.where(jnp.arange(block)[None] < s['np'], d, big).min(1)

    def full_update(s):
        ub = jnp.where(s['ub'] < 0, s['ub'], jnp.minimum(s['ub'], pending(s, None)))
        return dict(s, ub=ub, np=jnp.int32(0))

    def body(i, s):
        s = jax.lax.cond(s['np'] == block, full_update, lambda s: s, s)
        # the `top` largest bounds by their float32 rounding, as a [1, m] row: XLA:CPU runs any
        # other top_k (int32, float64, 1-D) as a full sort, 4x the rest of a pick. The rounding
        # is monotone, so a refreshed value whose rounding beats the top-th rounded bound beats
        # every bound left out.
        low, idx = (a[0] for a in jax.lax.top_k(s['ub'].astype(jnp.float32)[None], top))
        vals = s['ub'][idx]
        r = jnp.where(vals < 0, vals, jnp.minimum(vals, pending(s, idx)))
        s = dict(s, ub=s['ub'].at[idx].set(r))
        best_r = r.max()
        lazy_best = jnp.where(r == best_r, idx, m).min()

        def exact(s):
            s = full_update(s)
            return s, jnp.argmax(s['ub']).astype(jnp.int32)

        s, j = jax.lax.cond(best_r.astype(jnp.float32) > low[top - 1],
                            lambda s: (s, lazy_best.astype(jnp.int32)), exact, s)
        return dict(s, ub=s['ub'].at[j].set(-1), picks=s['picks'].at[i].set(j),
                    pend=s['pend'].at[s['np']].set(_take(x, j[None], mesh)[0]),
                    pend_sq=s['pend_sq'].at[s['np']].set(sq[j]), np=s['np'] + 1)

    x0 = _take(x, first[None], mesh)
    ub0 = jnp.maximum(sq + sq[first] - 2 * _dot(x, x0, acc)[:, 0], 0)
    ub0 = jnp.where(jnp.arange(m) < valid, ub0, -1)
    s = dict(ub=ub0.at[first].set(-1), picks=jnp.zeros((n,), jnp.int32).at[0].set(first),
             pend=jnp.zeros((block, x.shape[1]), x.dtype), pend_sq=jnp.zeros((block,), acc),
             np=jnp.int32(0))
    return jax.lax.fori_loop(1, n, body, s)['picks']


def greedy_select(features, n: int, first: int = 0, devices=None) -> np.ndarray:
    """Farthest-point selection: start at `first`, then repeatedly add the candidate farthest from
    its nearest chosen one. Returns the n indices in the order chosen (ties: lowest index). The
    candidates are split over `devices` (default: every local device): the same picks."""
    x = np.asarray(features).reshape(len(features), -1)
    if not 1 <= n <= x.shape[0]:
        raise ValueError(f'greedy_select: n={n}; allowed 1..{x.shape[0]}')
    with _x64(x):
        xd, mesh = _place(x, devices)
        return np.asarray(greedy_loop(xd, n, jnp.int32(first), jnp.int32(len(x)), mesh))


@partial(jax.jit, static_argnames=('n', 'mesh', 'block'))
def _threshold(x, order, n, limits, mesh=None, block: int = 32):
    """The threshold-decay filter with lazy updates. A visit needs the candidate's distance to
    the accepted set. Every candidate keeps `min_d`, its squared distance to the accepted set as
    of the last flush; the newest accepted wait in `pend` (at most `block`), and a visit adds
    its direct distance to those. When `block` are pending, one matrix product (compute-bound)
    brings every min_d up to date. So a visit costs `block` x d, not a pass over all m
    candidates, and a rejected candidate costs no pass at all. limits[p]: the squared threshold
    of pass p (the last one serves every later pass)."""
    x, acc, big = _prepare(x)
    m = x.shape[0]
    sq = jnp.sum(x.astype(acc) ** 2, axis=1)
    live = jnp.arange(block)

    def flush(s):
        d = jnp.maximum(sq[:, None] + s['pend_sq'][None] - 2 * _dot(x, s['pend'], acc), 0)
        d = jnp.where(live[None] < s['np'], d, big)
        return dict(s, min_d=jnp.minimum(s['min_d'], d.min(1)), np=jnp.int32(0))

    def cond(s):
        return s['count'] < n

    def body(s):
        c = order[s['pos']]
        row = _take(x, c[None], mesh)[0]
        to_pend = jnp.where(live < s['np'],
                            jnp.sum((s['pend'].astype(acc) - row.astype(acc)[None]) ** 2, 1), big)
        limit = limits[jnp.minimum(s['passes'], len(limits) - 1)]
        accept = (~s['taken'][c]) & (jnp.minimum(s['min_d'][c], to_pend.min()) > limit)
        k = jnp.where(accept, s['np'], block)  # out of range: the scatter drops it
        s = dict(s, taken=s['taken'].at[c].set(s['taken'][c] | accept),
                 picks=s['picks'].at[jnp.where(accept, s['count'], n)].set(c, mode='drop'),
                 pend=s['pend'].at[k].set(row, mode='drop'),
                 pend_sq=s['pend_sq'].at[k].set(sq[c], mode='drop'),
                 np=s['np'] + accept.astype(jnp.int32),
                 count=s['count'] + accept.astype(jnp.int32))
        s = jax.lax.cond(s['np'] == block, flush, lambda s: s, s)
        end_of_pass = s['pos'] == len(order) - 1  # a whole pass short of n: lower the threshold
        return dict(s, pos=jnp.where(end_of_pass, 0, s['pos'] + 1),
                    passes=s['passes'] + end_of_pass.astype(jnp.int32))

    state = dict(min_d=jnp.full((m,), big, acc), taken=jnp.zeros((m,), bool),
                 picks=jnp.zeros((n,), jnp.int32), count=jnp.int32(0), pos=jnp.int32(0),
                 passes=jnp.int32(0), pend=jnp.zeros((block, x.shape[1]), x.dtype),
                 pend_sq=jnp.zeros((block,), acc), np=jnp.int32(0))
    s = jax.lax.while_loop(cond, body, state)
    return s['picks'], s['passes']


def _schedule(tau: float, decay: float, integer: bool, max_passes: int = 100_000):
    """(tau of each pass, the squared threshold each pass compares with). tau decays by repeated
    float64 multiplication. On integer distances the comparison d > tau^2 is d > floor(tau^2),
    exactly; the schedule ends at the first pass whose threshold is 0 (every distinct candidate
    passes it). On float features it ends where tau^2 underflows (or after max_passes, then 0)."""
    taus = [tau]
    while len(taus) < max_passes and taus[-1] * taus[-1] >= (1 if integer else 1e-300):
        taus.append(taus[-1] * decay)
    sq = np.array([t * t for t in taus[:-1]] + [0.0])
    return np.array(taus), (np.floor(sq).astype(np.int64).clip(0, 2 ** 31 - 1) if integer else sq)


def threshold_select(features, n: int, tau: float, decay: float, seed: int = 0,
                     return_info: bool = False, devices=None):
    """Threshold-decay filter: visit candidates in a seeded random order and accept one when its
    distance to every accepted one exceeds tau; after each pass that leaves fewer than n accepted,
    tau <- decay * tau and the next pass continues (accepted points stay accepted: they are still
    farther apart than the smaller tau). Returns the accepted indices in acceptance order."""
    x = np.asarray(features).reshape(len(features), -1)
    if not 1 <= n <= x.shape[0]:
        raise ValueError(f'threshold_select: n={n}; allowed 1..{x.shape[0]}')
    if not (tau > 0 and 0 < decay < 1):
        raise ValueError(f'threshold_select: tau={tau}, decay={decay}; need tau > 0, 0 < decay < 1')
    distinct = len(unique_rows(x))
    if distinct < n:  # copies are never farther apart than any tau: the filter would never end
        raise ValueError(f'threshold_select: {distinct} distinct candidates of {x.shape[0]} '
                         f'cannot yield {n} images farther apart than any tau')
    order = jnp.asarray(np.random.default_rng(seed).permutation(x.shape[0]), jnp.int32)
    integer = _integer(x)
    taus, limits = _schedule(tau, decay, integer)
    with _x64(x):
        xd, mesh = _place(x, devices)
        limits = jnp.asarray(limits, jnp.int32 if integer else xd.dtype)
        picks, passes = _threshold(xd, order, n, limits, mesh)
        picks, passes = np.asarray(picks), int(passes)
    info = dict(final_tau=float(taus[min(passes, len(taus) - 1)]), passes=passes + 1)
    return (picks, info) if return_info else picks


class Rule:
    """A selection rule: which n of the candidates (in a shuffled order) train the next
    generation. Adding one is one subclass with `@register`; the config checks, the held-out sets
    and the cost model read its properties.

    uses_distances: the rule reads the candidates' features (their distances decide), so the
      loop hands it the selection space's features, and its picks reach further into a larger
      pool's tails: the held-out set behind the copy measures repeats it at D_{g+1}'s pool size.
      A rule without it picks an i.i.d. subset, whatever the pool's size.
    """
    name = ''
    uses_distances = False
    kw = {}  # the parameters `configured` set

    def params(self, paradigm: str, space: str, lp) -> dict:
        """The rule's parameters for a paradigm, in a space, from the loop config section."""
        return {}

    def configured(self, paradigm: str, space: str, lp) -> 'Rule':
        """This rule with its parameters for a paradigm and space (`params`) set."""
        bound = copy.copy(self)
        bound.kw = self.params(paradigm, space, lp)
        return bound

    def __call__(self, features, n: int, seed: int):
        """`pick` with the configured parameters."""
        return self.pick(features, n, seed=seed, **self.kw)

    def pick(self, features, n: int, *, seed: int, **params):
        """(indices of n candidates, what the rule records)."""
        raise NotImplementedError


RULES = Registry('loop.selection')
register, get = RULES.register, RULES.of  # @register: a `loop.selection` value


@register
class First(Rule):
    """The first n of the shuffled candidates: a uniform subset (the paper's vanilla)."""
    name = 'none'

    def pick(self, features, n, *, seed):
        return np.arange(n), {}


@register
class Random(Rule):
    """A seeded uniform subset, in candidate order."""
    name = 'random'

    def pick(self, features, n, *, seed):
        return np.sort(np.random.default_rng(seed).choice(len(features), n, replace=False)), {}


@register
class Greedy(Rule):
    """Greedy farthest-point from a seeded first pick."""
    name = 'greedy'
    uses_distances = True

    def pick(self, features, n, *, seed):
        first = int(np.random.default_rng(seed).integers(len(features)))
        return greedy_select(features, n, first=first), {}


@register
class Threshold(Rule):
    """The threshold-decay filter. Its parameters: tau0 = 2000 in 0-255 pixels or 60 in a feature
    space; alpha = 0.95, except 0.80 for accumulate in a feature space (the reference code's
    choice); loop.tau and loop.decay override them (0 = the reference value)."""
    name = 'threshold'
    uses_distances = True

    def params(self, paradigm, space, lp):
        tau = lp.tau or (2000.0 if space == 'pixel' else 60.0)
        decay = lp.decay or (0.80 if paradigm == 'accumulate' and space != 'pixel' else 0.95)
        return dict(tau=tau, decay=decay)

    def pick(self, features, n, *, seed, tau, decay):
        return threshold_select(features, n, tau, decay, seed=seed, return_info=True)


def select(rule: str, features, n: int, *, seed: int, **params):
    """Indices of n of the candidates under `rule` (candidates are in a shuffled order), and
    what the rule records; `params` as the rule's `params` gives them."""
    return get(rule).pick(features, n, seed=seed, **params)

"""Selection rules (which N candidates train the next generation) and paradigms (which candidates
there are). Greedy farthest-point and the threshold-decay filter run their whole loop on device.

Distances are Euclidean in the feature space handed in (pixels in [0, 255] by default). uint8
pixels take an integer path, int8 x int8 -> int32 products, exact on every backend (float32 rounds
squared distances above 2^24), so the picks are those of exact arithmetic, ties going to the
lowest index. Float features run in float64 (float32 on TPU); each record says which.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import jax
import jax.numpy as jnp

from collapse_jax import parallel
from collapse_jax.data import need
from collapse_jax.layout import TrainSet
from collapse_jax.scoring import unique_rows

HIGHEST = jax.lax.Precision.HIGHEST
SELECTIONS = ('none', 'random', 'greedy', 'threshold')
PARADIGMS = ('replace', 'accumulate', 'accumulate_subsample', 'fresh')


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
    mesh = jax.sharding.Mesh(np.asarray(devices), ('c',))
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('c'))), mesh


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
        li = idx - jax.lax.axis_index('c') * xl.shape[0]
        own = (li >= 0) & (li < xl.shape[0])
        rows = xl[jnp.clip(li, 0, xl.shape[0] - 1)].astype(acc)
        return jax.lax.psum(jnp.where(own[:, None], rows, 0), 'c')
    return jax.shard_map(local, mesh=mesh, in_specs=(P('c'), P()), out_specs=P(),
                         check_vma=False)(x, idx).astype(x.dtype)


@partial(jax.jit, static_argnames=('n', 'mesh', 'block', 'top'))
def _greedy(x, n, first, valid, mesh=None, block: int = 32, top: int = 32):
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
        vals, idx = jax.lax.top_k(s['ub'], top)
        r = jnp.where(vals < 0, vals, jnp.minimum(vals, pending(s, idx)))
        s = dict(s, ub=s['ub'].at[idx].set(r))
        best_r = r.max()
        lazy_best = jnp.where(r == best_r, idx, m).min()

        def exact(s):
            s = full_update(s)
            return s, jnp.argmax(s['ub']).astype(jnp.int32)

        s, j = jax.lax.cond(best_r > vals[top - 1], lambda s: (s, lazy_best.astype(jnp.int32)),
                            exact, s)
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
    with jax.enable_x64(not _integer(x) and _float_dtype() == jnp.float64):
        xd, mesh = _place(x, devices)
        return np.asarray(_greedy(xd, n, jnp.int32(first), jnp.int32(len(x)), mesh))


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
    with jax.enable_x64(not integer and _float_dtype() == jnp.float64):
        xd, mesh = _place(x, devices)
        limits = jnp.asarray(limits, jnp.int32 if integer else xd.dtype)
        picks, passes = _threshold(xd, order, n, limits, mesh)
        picks, passes = np.asarray(picks), int(passes)
    info = dict(final_tau=float(taus[min(passes, len(taus) - 1)]), passes=passes + 1)
    return (picks, info) if return_info else picks


def select(rule: str, features, n: int, *, seed: int, tau: float = 0.0, decay: float = 0.9):
    """Indices of n of the candidates under `rule` (candidates are in a shuffled order)."""
    m = len(features)
    if rule == 'none':
        return np.arange(n), {}
    if rule == 'random':
        return np.sort(np.random.default_rng(seed).choice(m, n, replace=False)), {}
    if rule == 'greedy':
        first = int(np.random.default_rng(seed).integers(m))
        return greedy_select(features, n, first=first), {}
    if rule == 'threshold':
        return threshold_select(features, n, tau, decay, seed=seed, return_info=True)
    raise ValueError(f'loop.selection={rule!r}; allowed: {", ".join(SELECTIONS)}')


def candidate_sources(paradigm: str, generation: int, n: int, pool_size: int, rng):
    """Which rows of which sources are candidates for D_{g+1}, after generation g sampled S_g.

    Sources are named 'real' (D_0) and 'S<i>' (the pool of generation i). Returns a list of
    (source, row indices); for `fresh` the caller adds the new real rows. Rows are in a shuffled
    order (`rng`, a numpy Generator), so 'none' takes a random subset.
    """
    pool = f'S{generation}'
    if paradigm in ('replace', 'fresh'):
        return [(pool, rng.permutation(pool_size))]
    if paradigm == 'accumulate':
        return [('real', np.arange(n))] + [(f'S{i}', np.arange(pool_size))
                                           for i in range(generation + 1)]
    if paradigm == 'accumulate_subsample':
        sources = ['real'] + [f'S{i}' for i in range(generation + 1)]
        sizes = [n if s == 'real' else pool_size for s in sources]
        counts = np.full(len(sources), n // len(sources))
        counts[: n - counts.sum()] += 1  # N in all, about N / (g + 2) from each source
        return [(s, np.sort(rng.choice(size, c, replace=False)))
                for s, size, c in zip(sources, sizes, counts)]
    raise ValueError(f'loop.paradigm={paradigm!r}; allowed: {", ".join(PARADIGMS)}')


def fresh_per_generation(cfg, n=None) -> int:
    """New real images per generation under 'fresh', for a training set of n (default N)."""
    n = cfg.data.n if n is None else n
    return int(round(cfg.loop.fresh_fraction * n)) if cfg.loop.paradigm == 'fresh' else 0


def source_names(paradigm: str, generation: int) -> list:
    """The sources D_{g+1}'s candidates come from: S_g alone, or D_0 and every pool so far."""
    pools = [f'S{i}' for i in range(generation + 1)]
    return ['real'] + pools if paradigm.startswith('accumulate') else pools[-1:]


def pool_size_matters(paradigm: str, rule: str) -> bool:
    """Whether the law of an image of D_{g+1} depends on the pool's size, not only on the pool's
    law: greedy and threshold reach further into the tails of a larger pool, and accumulate
    mixes whole pools. Otherwise (none, random, the per-source subsample) D_{g+1} is an i.i.d.
    subset of its sources, whatever their size."""
    return paradigm == 'accumulate' or (paradigm != 'accumulate_subsample'
                                        and rule in ('greedy', 'threshold'))


def next_training_set(lp, generation: int, n: int, sources: dict, *, rng, seed: int, featurize,
                      fresh=None):
    """D_{g+1} of size n (N; more under accumulate:none) after generation g sampled S_g.

    lp: the loop config section (paradigm, selection, feature_space, tau, decay, pool_factor).
    sources: {'real': (images, labels), 'S<i>': (images, labels)} with the names `source_names`
      gives (labels may be None). rng: numpy Generator of the candidates' order; seed: the
    rule's seed; featurize: images -> the selection's features. fresh: (images, labels, rows) of
    the new real images added under 'fresh', else None. Returns a layout.TrainSet whose source
    ids are -1 real, -2 fresh real, i for S_i."""
    pool = sources[f'S{generation}'][0]
    cands = candidate_sources(lp.paradigm, generation, n, len(pool), rng)
    fresh_n = 0 if fresh is None else len(fresh[0])
    want = n - fresh_n

    def cat(parts):
        return None if any(p is None for p in parts) else np.concatenate(parts)
    images = np.concatenate([sources[s][0][rows] for s, rows in cands])
    labels = cat([None if sources[s][1] is None else sources[s][1][rows] for s, rows in cands])
    source = np.concatenate([np.full(len(rows), -1 if s == 'real' else int(s[1:]), np.int16)
                             for s, rows in cands])
    index = np.concatenate([rows for _, rows in cands])
    info = dict(rule=lp.selection, paradigm=lp.paradigm, candidates=int(len(images)))
    if not keeps_all(lp.paradigm, lp.selection):
        need(len(images) >= want, f'loop.pool_factor={lp.pool_factor}: {len(images)} candidates '
             f'cannot yield {want} images')
        tau, decay = threshold_params(lp.paradigm, lp.feature_space, lp.tau, lp.decay)
        feats = featurize(images)
        if lp.selection in ('greedy', 'threshold'):
            info['arithmetic'] = arithmetic(feats)
        pick, extra = select(lp.selection, feats, want, seed=seed, tau=tau, decay=decay)
        info.update(extra)
        images, source, index = images[pick], source[pick], index[pick]
        labels = None if labels is None else labels[pick]
    if fresh_n:
        images = np.concatenate([images, fresh[0]])
        labels = None if labels is None or fresh[1] is None else np.concatenate([labels, fresh[1]])
        source = np.concatenate([source, np.full(fresh_n, -2, np.int16)])
        index = np.concatenate([index, fresh[2]])
    return TrainSet(images, labels, source, index, dict(info, n=int(len(images))))


def heldout_set(lp, generation: int, n: int, draws: dict, real, *, rng, featurize, fresh_n=0):
    """(H_{g+1}, what it is): a held-out set for D_{g+1}'s relative copy measures.

    A held-out set is a valid null only if its images are independent draws with the law of an
    image of D_{g+1}. So H_{g+1} repeats D_{g+1}'s construction (`next_training_set`) at D_{g+1}'s
    own sizes, N images from pool_factor x N candidates (greedy and threshold reach further
    into a larger pool's tails; from N under none and random, whose picks are i.i.d. at any
    size), on independent sources: draws {'S<i>': E_i} for the pools, `real` (held-out real
    images, N a replica) for D_0 and the fresh images. As many replicas as the draws hold,
    concatenated: the replicas are independent, and each image has the law of one of D_{g+1}.
    (None, why) when the draws hold no replica."""
    size = n * lp.pool_factor if pool_size_matters(lp.paradigm, lp.selection) else n
    names = source_names(lp.paradigm, generation)
    needs_real = 'real' in names or fresh_n > 0
    reps = min(len(draws[s]) for s in names if s != 'real') // size
    if needs_real:
        reps = min(reps, len(real) // n)
    if reps < 1:
        return None, (f'none (the evaluation sample holds no replica of {size} draws'
                      f'{f" and {n} held-out real" if needs_real else ""})')
    held = []
    for j in range(reps):
        block = real[j * n:(j + 1) * n] if needs_real else None
        sources = {s: (block, None) if s == 'real' else (draws[s][j * size:(j + 1) * size], None)
                   for s in names}
        fresh = (block[:fresh_n], None, np.arange(fresh_n)) if fresh_n else None
        try:
            held.append(next_training_set(lp, generation, n, sources, rng=rng,
                                          seed=int(rng.integers(2 ** 31)), featurize=featurize,
                                          fresh=fresh).images)
        except ValueError as e:
            return None, f'none (a held-out replica failed: {e})'
    return np.concatenate(held), (
        f'{reps} independent replica(s) of {lp.paradigm}/{lp.selection} at N={n} from {size} '
        f'draws of E_{generation}' + (' and held-out real' if needs_real else ''))


def keeps_all(paradigm: str, rule: str) -> bool:
    """Whether every candidate trains the next generation, with no rule applied: the per-source
    subsample of accumulate_subsample, and accumulate:none's growing union."""
    return paradigm == 'accumulate_subsample' or (paradigm == 'accumulate' and rule == 'none')


def threshold_params(paradigm: str, space: str, tau: float = 0.0, decay: float = 0.0):
    """(tau0, alpha) of the threshold-decay filter; 0 in the config means the reference's value:
    tau0 = 2000 in 0-255 pixels or 60 in a feature space; alpha = 0.95, except 0.80 for
    accumulate in a feature space (the reference code's choice)."""
    tau = tau or (2000.0 if space == 'pixel' else 60.0)
    decay = decay or (0.80 if paradigm == 'accumulate' and space != 'pixel' else 0.95)
    return tau, decay


def check_config(cfg) -> None:
    """The loop section's own checks."""
    lp = cfg.loop
    need(lp.paradigm in PARADIGMS,
         f'loop.paradigm={lp.paradigm!r}; allowed: {", ".join(PARADIGMS)}')
    need(lp.selection in SELECTIONS,
         f'loop.selection={lp.selection!r}; allowed: {", ".join(SELECTIONS)}')
    need(lp.paradigm != 'accumulate_subsample' or lp.selection in ('none', 'random'),
         f'loop.selection={lp.selection!r} with accumulate_subsample; allowed: none, random '
         '(the per-source subsample is the selection)')
    need(lp.pool_factor in (1, 2, 5), f'loop.pool_factor={lp.pool_factor}; allowed: 1, 2, 5')
    need(lp.generations >= 1, f'loop.generations={lp.generations}; must be >= 1')
    need(0 < lp.fresh_fraction < 1 or lp.paradigm != 'fresh',
         f'loop.fresh_fraction={lp.fresh_fraction}; allowed: 0 < x < 1')
    need(lp.tau >= 0, f'loop.tau={lp.tau}; must be >= 0 (0 = the reference value)')
    need(lp.decay == 0 or 0 < lp.decay < 1,
         f'loop.decay={lp.decay}; allowed: 0 (the reference value) or 0 < x < 1')

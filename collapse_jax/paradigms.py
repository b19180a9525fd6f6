"""Paradigms: which candidates D_{g+1} is chosen from after generation g (S_g alone, or D_0 and
every pool so far, fresh real images beside), how it is built with a selection rule
(selection.py), and the held-out sets that repeat its construction on independent draws.
"""
from __future__ import annotations

import numpy as np

from collapse_jax.data import need
from collapse_jax.layout import TrainSet
from collapse_jax import selection

PARADIGMS = ('replace', 'accumulate', 'accumulate_subsample', 'fresh')


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
                      fresh=None, features=None):
    """D_{g+1} of size n (N; more under accumulate:none) after generation g sampled S_g.

    lp: the loop config section (paradigm, selection, feature_space, tau, decay, pool_factor).
    sources: {'real': (images, labels), 'S<i>': (images, labels)} with the names `source_names`
      gives (labels may be None). rng: numpy Generator of the candidates' order; seed: the
    rule's seed; featurize: images -> the selection's features. fresh: (images, labels, rows) of
    the new real images added under 'fresh', else None. features: {source: the selection's
    features of all its rows}, made once by the caller (a pool never changes), or None to
    featurize the candidates here. Returns a layout.TrainSet whose source ids are -1 real, -2
    fresh real, i for S_i."""
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
        feats = featurize(images) if features is None else np.concatenate(
            [features[s][rows] for s, rows in cands])
        if lp.selection in ('greedy', 'threshold'):
            info['arithmetic'] = selection.arithmetic(feats)
        pick, extra = selection.select(lp.selection, feats, want, seed=seed, tau=tau, decay=decay)
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
    need(lp.selection in selection.SELECTIONS,
         f'loop.selection={lp.selection!r}; allowed: {", ".join(selection.SELECTIONS)}')
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

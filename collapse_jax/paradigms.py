"""Paradigms: which candidates D_{g+1} is chosen from after generation g (S_g alone, or D_0 and
every pool so far, fresh real images beside), how it is built with a selection rule
(selection.py), and the held-out sets that repeat its construction on independent draws.
"""
from __future__ import annotations

import numpy as np

from collapse_jax.data import Registry, need
from collapse_jax.layout import TrainSet
from collapse_jax import selection
from collapse_jax.store import FRESH, REAL, ArrayStore, Source


class Paradigm:
    """Which candidates D_{g+1} is chosen from after generation g sampled S_g. Adding one is one
    subclass with `@register`; the loop, the held-out sets, the cost model and the reports read
    it. Its sources are store.Source values: REAL (D_0) and Source.pool(i) (S_i).

    family: 'replace' (starts from S_g alone) or 'accumulate' (keeps earlier data); the study's
      figures group variants by it.
    allowed_rules: the selection rules it takes (None = every registered rule).
    fresh: whether new real images join each D_{g+1} (loop.fresh_fraction of N).
    """
    name = ''
    family = 'replace'
    allowed_rules = None
    fresh = False

    def sources(self, g: int) -> list:
        """The sources D_{g+1}'s candidates come from."""
        return [Source.pool(g)]

    def candidates(self, g: int, n: int, pool_size: int, rng) -> list:
        """[(source, row indices)] of D_{g+1}'s candidates, in a shuffled order (`rng`, a numpy
        Generator), so the rule 'none' takes a uniform subset. Fresh rows are the caller's."""
        return [(Source.pool(g), rng.permutation(pool_size))]

    def keeps_all(self, rule: str) -> bool:
        """Whether every candidate trains the next generation, with no rule applied."""
        return False

    def pool_size_matters(self, rule: str) -> bool:
        """Whether the law of an image of D_{g+1} depends on the pool's size, not only on the
        pool's law: a rule that reads distances reaches further into a larger pool's tails.
        Otherwise D_{g+1} is an i.i.d. subset of its sources, whatever their size."""
        return selection.get(rule).uses_distances

    def candidate_count(self, g: int, n: int, pool_size: int) -> int:
        """How many images D_{g+1} is chosen from (fresh images aside)."""
        return sum(n if s == REAL else pool_size for s in self.sources(g))

    def train_size(self, g: int, n: int, pool_factor: int, rule: str) -> int:
        """|D_g|: N, unless every candidate trains it."""
        return self.candidate_count(g - 1, n, n * pool_factor) if g and self.keeps_all(rule) else n


PARADIGMS = Registry('loop.paradigm')
register, get = PARADIGMS.register, PARADIGMS.of  # @register: a `loop.paradigm` value


@register
class Replace(Paradigm):
    """D_{g+1} from S_g alone (the paper's replace)."""
    name = 'replace'


@register
class Accumulate(Paradigm):
    """D_{g+1} from D_0 and every pool so far; under 'none' the whole union trains it."""
    name = 'accumulate'
    family = 'accumulate'

    def sources(self, g):
        return [REAL] + [Source.pool(i) for i in range(g + 1)]

    def candidates(self, g, n, pool_size, rng):
        return [(s, np.arange(n if s == REAL else pool_size)) for s in self.sources(g)]

    def keeps_all(self, rule):
        return rule == 'none'

    def pool_size_matters(self, rule):
        return True  # it mixes whole pools


@register
class AccumulateSubsample(Accumulate):
    """The paper's vanilla accumulate: N images in all, about N / (g + 2) from D_0 and from each
    pool so far (the per-source subsample is the selection)."""
    name = 'accumulate_subsample'
    allowed_rules = ('none', 'random')

    def candidates(self, g, n, pool_size, rng):
        sources = self.sources(g)
        sizes = [n if s == REAL else pool_size for s in sources]
        counts = np.full(len(sources), n // len(sources))
        counts[: n - counts.sum()] += 1
        return [(s, np.sort(rng.choice(size, c, replace=False)))
                for s, size, c in zip(sources, sizes, counts)]

    def keeps_all(self, rule):
        return True

    def pool_size_matters(self, rule):
        return False  # an i.i.d. subsample of each source

    def candidate_count(self, g, n, pool_size):
        return n


@register
class Fresh(Paradigm):
    """Replace, with loop.fresh_fraction of N new real images in each D_{g+1}."""
    name = 'fresh'
    fresh = True


def fresh_per_generation(cfg, n=None) -> int:
    """New real images per generation under 'fresh', for a training set of n (default N)."""
    n = cfg.data.n if n is None else n
    return int(round(cfg.loop.fresh_fraction * n)) if get(cfg.loop.paradigm).fresh else 0


def of_config(lp):
    """(the Paradigm, the Rule with its parameters) of a loop config section."""
    paradigm = get(lp.paradigm)
    return paradigm, selection.get(lp.selection).configured(paradigm.name, lp.feature_space, lp)


def next_training_set(paradigm, rule, g: int, store, *, rng, seed: int) -> TrainSet:
    """D_{g+1}: N images (more where the paradigm keeps every candidate) after generation g
    sampled S_g, from `store` (a store.Store: the sources, their features, the fresh images).
    rule: a configured selection.Rule; rng: numpy Generator of the candidates' order; seed: the
    rule's. Returns a layout.TrainSet whose source codes are store.Source codes."""
    cands = paradigm.candidates(g, store.n, len(store.images(Source.pool(g))[0]), rng)
    fresh = store.fresh(g)
    want = store.n - (0 if fresh is None else len(fresh[0]))

    def cat(parts):
        return None if any(p is None for p in parts) else np.concatenate(parts)
    images = np.concatenate([store.images(s)[0][rows] for s, rows in cands])
    labels = cat([None if store.images(s)[1] is None else store.images(s)[1][rows]
                  for s, rows in cands])
    source = np.concatenate([np.full(len(rows), s.code, np.int16) for s, rows in cands])
    index = np.concatenate([rows for _, rows in cands])
    info = dict(rule=rule.name, paradigm=paradigm.name, candidates=int(len(images)))
    if not paradigm.keeps_all(rule.name):
        need(len(images) >= want, f'loop.pool_factor={store.pool_size // store.n}: '
             f'{len(images)} candidates cannot yield {want} images')
        if rule.uses_distances:
            feats = np.concatenate([store.features(s)[rows] for s, rows in cands])
            info['arithmetic'] = selection.arithmetic(feats)
        else:  # a rule that reads no distances needs only the candidates' count
            feats = np.empty((len(images), 0), np.uint8)
        pick, extra = rule(feats, want, seed)
        info.update(extra)
        images, source, index = images[pick], source[pick], index[pick]
        labels = None if labels is None else labels[pick]
    if fresh is not None:
        images = np.concatenate([images, fresh[0]])
        labels = None if labels is None or fresh[1] is None else np.concatenate([labels, fresh[1]])
        source = np.concatenate([source, np.full(len(fresh[0]), FRESH.code, np.int16)])
        index = np.concatenate([index, fresh[2]])
    return TrainSet(images, labels, source, index, dict(info, n=int(len(images))))


def heldout_set(paradigm, rule, g: int, draws, *, rng) -> tuple:
    """(H_{g+1}, what it is): a held-out set for D_{g+1}'s relative copy measures.

    A held-out set is a valid null only if its images are independent draws with the law of an
    image of D_{g+1}. So H_{g+1} repeats D_{g+1}'s construction (`next_training_set`) at D_{g+1}'s
    own sizes, N images from pool_factor x N candidates (greedy and threshold reach further
    into a larger pool's tails; from N under none and random, whose picks are i.i.d. at any
    size), on independent sources. `draws`: a store.ArrayStore at the run's sizes whose
    Source.pool(i) holds E_i, REAL held-out real images (N a replica, for D_0 and the fresh
    images); rng: a numpy Generator (the candidates' order, each replica's seed). As
    many replicas as the draws hold, concatenated: the replicas are independent, and each image
    has the law of one of D_{g+1}. (None, why) when the draws hold no replica."""
    n = draws.n
    size = draws.pool_size if paradigm.pool_size_matters(rule.name) else n
    names = paradigm.sources(g)
    needs_real = REAL in names or draws.fresh_n > 0
    reps = min(len(draws.images(s)[0]) for s in names if s != REAL) // size
    if needs_real:
        reps = min(reps, len(draws.images(REAL)[0]) // n)
    if reps < 1:
        return None, (f'none (the evaluation sample holds no replica of {size} draws'
                      f'{f" and {n} held-out real" if needs_real else ""})')
    held = []
    for j in range(reps):
        block = draws.images(REAL)[0][j * n:(j + 1) * n] if needs_real else None
        replica = ArrayStore(
            {s: block if s == REAL else draws.images(s)[0][j * size:(j + 1) * size]
             for s in names}, n=n, pool_size=draws.pool_size, featurize=draws.featurize,
            fresh=(block[:draws.fresh_n], None, np.arange(draws.fresh_n)) if draws.fresh_n
            else None)
        try:
            held.append(next_training_set(paradigm, rule, g, replica, rng=rng,
                                          seed=int(rng.integers(2 ** 31))).images)
        except ValueError as e:
            return None, f'none (a held-out replica failed: {e})'
    return np.concatenate(held), (
        f'{reps} independent replica(s) of {paradigm.name}/{rule.name} at N={n} from {size} '
        f'draws of E_{g}' + (' and held-out real' if needs_real else ''))


def check_config(cfg) -> None:
    """The loop section's own checks."""
    lp = cfg.loop
    paradigm, rule = get(lp.paradigm), selection.get(lp.selection)
    allowed = paradigm.allowed_rules or tuple(selection.RULES)
    need(rule.name in allowed, f'loop.selection={lp.selection!r} with {paradigm.name}; allowed: '
         f'{", ".join(allowed)}')
    need(lp.pool_factor in (1, 2, 5), f'loop.pool_factor={lp.pool_factor}; allowed: 1, 2, 5')
    need(lp.generations >= 1, f'loop.generations={lp.generations}; must be >= 1')
    need(0 < lp.fresh_fraction < 1 or lp.paradigm != 'fresh',
         f'loop.fresh_fraction={lp.fresh_fraction}; allowed: 0 < x < 1')
    need(lp.tau >= 0, f'loop.tau={lp.tau}; must be >= 0 (0 = the reference value)')
    need(lp.decay == 0 or 0 < lp.decay < 1,
         f'loop.decay={lp.decay}; allowed: 0 (the reference value) or 0 < x < 1')

import numpy as np
import pytest

from collapse_jax import paradigms, selection
from collapse_jax import greedy_select, knn_entropy, threshold_select
from collapse_jax.store import REAL, ArrayStore, Source

S0 = Source.pool(0)


def naive_greedy(x, n, first):
    x = x.astype(np.float64)
    picks = [first]
    min_d = ((x - x[first]) ** 2).sum(1)
    for _ in range(n - 1):
        min_d[picks] = -1
        j = int(np.argmax(min_d))
        picks.append(j)
        min_d = np.minimum(min_d, ((x - x[j]) ** 2).sum(1))
    return np.array(picks)


def test_greedy_matches_naive_farthest_point():
    x = np.random.default_rng(0).integers(0, 256, size=(300, 48)).astype(np.float32)
    np.testing.assert_array_equal(greedy_select(x, 120, first=7), naive_greedy(x, 120, 7))


def naive_threshold(x, n, tau, decay, order):
    x = x.astype(np.float64)
    acc = []
    while True:
        for c in order:
            if c in acc:
                continue
            if all(np.sqrt(((x[c] - x[a]) ** 2).sum()) > tau for a in acc):
                acc.append(c)
                if len(acc) == n:
                    return np.array(acc), tau
        tau *= decay


def test_threshold_decay_matches_naive_rule():
    x = np.random.default_rng(1).normal(size=(200, 5)).astype(np.float32)
    picks, info = threshold_select(x, 150, tau=3.0, decay=0.8, seed=3, return_info=True)
    order = np.random.default_rng(3).permutation(200)
    ref, ref_tau = naive_threshold(x, 150, 3.0, 0.8, order)
    np.testing.assert_array_equal(picks, ref)
    assert info['passes'] > 1 and info['final_tau'] == pytest.approx(ref_tau, rel=1e-5)
    d = np.sqrt(((x[picks][:, None] - x[picks][None]) ** 2).sum(-1)) + np.eye(150) * 1e9
    assert d.min() > info['final_tau'] and len(set(picks)) == 150


@pytest.mark.parametrize('case', ['pixels', 'duplicates', 'few_distinct'])
def test_lazy_threshold_picks_what_the_plain_rule_picks(case):
    # uint8 pixels: integer distances, exact ties with tau possible; more than one flush of the
    # 32 pending picks; several decay steps
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (240, 16), dtype=np.uint8)
    n, tau = 100, 700.0
    if case == 'duplicates':
        x[120:] = x[:120]  # every image twice
    if case == 'few_distinct':
        x = x[rng.integers(0, 12, 240)]  # 12 distinct images, many copies
        n = 12
    picks, info = threshold_select(x, n, tau=tau, decay=0.9, seed=4, return_info=True)
    ref, ref_tau = naive_threshold(x, n, tau, 0.9, np.random.default_rng(4).permutation(240))
    np.testing.assert_array_equal(picks, ref)
    assert info['passes'] > 1 and info['final_tau'] == pytest.approx(ref_tau, rel=1e-12)


def test_greedy_raises_entropy_over_random():
    from collapse_jax import knn_entropy
    x = np.random.default_rng(2).normal(size=(400, 3))
    x[:200] *= 0.05  # a dense clump: greedy must avoid it
    g = knn_entropy(x[greedy_select(x, 100)])
    r = knn_entropy(x[np.random.default_rng(0).choice(400, 100, replace=False)])
    assert g > r + 1.0


@pytest.mark.parametrize('paradigm,g,expected', [
    ('replace', 0, {'S0': 40}),
    ('replace', 2, {'S2': 40}),
    ('fresh', 1, {'S1': 40}),
    ('accumulate', 0, {'real': 20, 'S0': 40}),
    ('accumulate', 2, {'real': 20, 'S0': 40, 'S1': 40, 'S2': 40}),
    ('accumulate_subsample', 0, {'real': 10, 'S0': 10}),
    ('accumulate_subsample', 1, {'real': 7, 'S0': 7, 'S1': 6}),
])
def test_paradigm_candidate_sets(paradigm, g, expected):
    cands = paradigms.get(paradigm).candidates(g, 20, 40, np.random.default_rng(0))
    assert {s.name: len(rows) for s, rows in cands} == expected
    for s, rows in cands:
        assert len(set(rows)) == len(rows) and rows.max() < (20 if s == REAL else 40)
    if paradigm in ('replace', 'fresh'):
        assert sorted(cands[0][1]) == list(range(40))  # the whole pool, shuffled


def test_select_rules_sizes_and_errors():
    x = np.random.default_rng(0).normal(size=(50, 4))
    for rule in selection.RULES:
        lp = loop_section(rule=rule, tau=5.0, decay=0.9)
        idx, _ = selection.select(rule, x, 20, seed=1, **selection.get(rule).params('replace',
                                                                                     'pixel', lp))
        assert len(idx) == 20 == len(set(idx.tolist()))
    np.testing.assert_array_equal(selection.select('none', x, 5, seed=0)[0], np.arange(5))
    with pytest.raises(ValueError, match='loop.selection'):
        selection.select('best', x, 5, seed=0)


def test_greedy_ties_go_to_the_lowest_index_like_the_plain_loop():
    # values in {0, 1, 2}: many exactly tied distances, the hard case for the lazy updates
    x = np.random.default_rng(3).integers(0, 3, size=(500, 6)).astype(np.uint8)
    for first, n in [(0, 200), (123, 64), (499, 37)]:
        np.testing.assert_array_equal(greedy_select(x, n, first=first),
                                      naive_greedy(x.astype(np.int64), n, first))


def test_greedy_on_pixels_is_exact_where_float32_rounds():
    # d = 3072 pixels: squared distances above 2^24, where float32 sums round
    x = np.random.default_rng(4).integers(0, 256, size=(400, 3072)).astype(np.uint8)
    np.testing.assert_array_equal(greedy_select(x, 150, first=5),
                                  naive_greedy(x.astype(np.int64), 150, 5))


def test_greedy_exact_where_the_float32_ranking_of_bounds_ties():
    """The lazy step ranks bounds by their float32 rounding. Here 120 candidates lie at squared
    distances 3068 * 255^2 + i (i <= 10) from the first pick, all one float32 value, and the
    farthest (i = 10) has the highest index: the top 32 by rounding miss it, and the pick must
    still be exact."""
    rng = np.random.default_rng(7)
    x = np.full((122, 3072), 255, np.uint8)
    x[0] = 0
    squares = {i: next(v for v in np.ndindex(4, 4, 4, 4) if sum(a * a for a in v) == i)
               for i in range(11)}
    for row, i in enumerate(list(rng.integers(0, 10, 119)) + [10], start=1):  # rows 1-120
        x[row, :4] = squares[int(i)]
    x[121, 4:] = rng.integers(0, 256, 3068)  # one candidate unlike the rest
    d0 = ((x.astype(np.int64) - x[0]) ** 2).sum(1)
    assert len(set(np.float32(d0[1:121]))) == 1 and d0[120] > d0[1:120].max()
    np.testing.assert_array_equal(greedy_select(x, 40, first=0),
                                  naive_greedy(x.astype(np.int64), 40, 0))


def test_integer_path_picks_what_float64_picks_on_pixels_and_says_so():
    # d = 3072: squared distances up to 2e8, beyond float32's 2^24; int8 x int8 -> int32 is exact
    # (any backend), float64 is exact here (CPU); both must choose the same, and the record says
    # which arithmetic ran
    x = np.random.default_rng(6).integers(0, 256, size=(300, 3072)).astype(np.uint8)
    f = x.astype(np.float64)
    np.testing.assert_array_equal(greedy_select(x, 120, first=9), greedy_select(f, 120, first=9))
    tau = float(np.sqrt(((f[:40, None] - f[None, :40]) ** 2).sum(-1)).max())  # > 1 pass
    a = threshold_select(x, 100, tau, 0.97, seed=2, return_info=True)
    b = threshold_select(f, 100, tau, 0.97, seed=2, return_info=True)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and a[1]['passes'] > 1
    assert selection.arithmetic(x).startswith('int8 x int8 -> int32')
    assert selection.arithmetic(f) == 'float64'
    assert selection.arithmetic(np.zeros((2, 40000), np.uint8)) == 'float64'  # would overflow


def test_threshold_schedule_compares_integers_exactly():
    taus, limits = selection._schedule(10.0, 0.5, integer=True)
    np.testing.assert_array_equal(taus, [10.0, 5.0, 2.5, 1.25, 0.625])
    np.testing.assert_array_equal(limits, [100, 25, 6, 1, 0])  # d > 6.25 <=> d > 6 for integer d
    _, flimits = selection._schedule(10.0, 0.5, integer=False)
    assert flimits[2] == 6.25 and flimits[-1] == 0.0


def test_threshold_with_too_few_distinct_candidates_stops_with_one_line():
    x = np.repeat(np.arange(5, dtype=np.float32)[:, None], 4, axis=0).reshape(20, 1) * [1, 1]
    with pytest.raises(ValueError, match='5 distinct candidates of 20 cannot yield 8 images'):
        threshold_select(x, 8, tau=3.0, decay=0.8)  # used to loop forever


def test_threshold_defaults_are_the_reference_code_values():
    rule, lp = selection.get('threshold'), loop_section(rule='threshold')
    assert (lp.tau, lp.decay) == (0.0, 0.0)  # 0 = the reference value

    def params(paradigm, space, lp=lp):
        p = rule.params(paradigm, space, lp)
        return p['tau'], p['decay']
    assert params('replace', 'pixel') == (2000.0, 0.95)
    assert params('accumulate', 'pixel') == (2000.0, 0.95)
    assert params('accumulate', 'dinov2') == (60.0, 0.80)
    assert params('replace', 'dinov2') == (60.0, 0.95)
    assert params('accumulate', 'pixel', loop_section(tau=5.0, decay=0.5)) == (5.0, 0.5)


def loop_section(paradigm='replace', rule='none', pool_factor=2, **fields):
    from configs import default
    lp = default.get_config().loop
    lp.update(dict(paradigm=paradigm, selection=rule, pool_factor=pool_factor, **fields))
    return lp


def flat(x):
    return x.reshape(len(x), -1)


@pytest.mark.parametrize('paradigm,rule', [('replace', 'none'), ('replace', 'greedy'),
                                           ('replace', 'threshold'), ('accumulate', 'greedy'),
                                           ('accumulate', 'none'), ('accumulate_subsample', 'none'),
                                           ('fresh', 'random')])
def test_next_training_set_on_plain_arrays(paradigm, rule):
    rng = np.random.default_rng(0)
    n, g = 20, 1
    real = rng.integers(0, 256, (n, 4, 4, 1), np.uint8)
    pools = {Source.pool(i): rng.integers(0, 256, (2 * n, 4, 4, 1), np.uint8)
             for i in range(g + 1)}
    store = ArrayStore({REAL: real, **pools}, n=n, pool_size=2 * n, featurize=flat,
                       fresh=(real[:2], None, np.arange(2)) if paradigm == 'fresh' else None)
    lp = loop_section(paradigm, rule, tau=300.0)
    d = paradigms.next_training_set(*paradigms.of_config(lp), g, store,
                                    rng=np.random.default_rng(1), seed=2)
    size = n + (g + 1) * 2 * n if (paradigm, rule) == ('accumulate', 'none') else n
    assert len(d.images) == len(d.source) == len(d.index) == d.info['n'] == size
    for s, i, img in zip(d.source, d.index, d.images):  # every image is the row it names
        src = real if s in (-1, -2) else pools[Source.pool(s)]
        np.testing.assert_array_equal(img, src[i])
    assert (d.source == -2).sum() == (2 if paradigm == 'fresh' else 0)
    if paradigm == 'replace':
        assert set(d.source.tolist()) == {g}  # S_g alone
        rows = paradigms.get(paradigm).candidates(g, n, 2 * n, np.random.default_rng(1))[0][1]
        params = selection.get(rule).params(paradigm, 'pixel', lp)
        picks = selection.select(rule, flat(pools[Source.pool(1)][rows]), n, seed=2, **params)[0]
        np.testing.assert_array_equal(d.index, rows[picks])  # the rule's picks, in its order
    # the same call is deterministic in its streams
    again = paradigms.next_training_set(*paradigms.of_config(lp), g, store,
                                        rng=np.random.default_rng(1), seed=2)
    np.testing.assert_array_equal(again.images, d.images)


def test_heldout_set_reads_only_fresh_draws_at_the_training_sets_own_sizes():
    rng = np.random.default_rng(0)
    n = 16
    e0 = rng.normal(size=(100, 5))

    def held(paradigm, rule, draws):
        lp = loop_section(paradigm, rule)
        return paradigms.heldout_set(*paradigms.of_config(lp), 0, ArrayStore(
            draws, n=n, pool_size=2 * n, featurize=flat), rng=np.random.default_rng(1))
    # none: i.i.d. picks at any size, so replicas of N from N draws use every whole block
    h, what = held('replace', 'none', {S0: e0})
    assert len(h) == 96 and what.startswith('6 independent replica')
    assert sorted(map(tuple, h)) == sorted(map(tuple, e0[:96]))
    # greedy: each replica is greedy on its own block of 2N draws, N picked
    h, what = held('replace', 'greedy', {S0: e0})
    assert len(h) == 48 and 'from 32 draws' in what
    for j in range(3):
        block = e0[32 * j:32 * (j + 1)]
        rep = h[16 * j:16 * (j + 1)]
        assert all(any(np.array_equal(r, b) for b in block) for r in rep)
        assert knn_entropy(rep) > knn_entropy(block[:16])  # spread out
    # accumulate needs N held-out real per replica; too few draws give none, with the reason
    h, what = held('accumulate', 'greedy', {S0: e0, REAL: rng.normal(size=(20, 5))})
    assert len(h) == 16 and what.endswith('and held-out real')
    h, what = held('replace', 'greedy', {S0: e0[:31]})
    assert h is None and 'no replica of 32 draws' in what


@pytest.mark.parametrize('rule', ['greedy', 'threshold'])
def test_heldout_replicas_are_a_null_for_a_model_of_its_training_law(rule):
    """Simulation: a model that reproduces the law of its training images exactly, i.e. its
    samples are images built by `next_training_set` itself on independent pools, must score the
    null against H_{g+1} (`heldout_set`): AUC 0.5, tail share q. Drawing the model from
    heldout_set too would score the null by exchangeability, whatever heldout_set builds; so the
    model comes from next_training_set, and the same model against an unselected held-out set
    (the pool's own law) is far from the null: the test can tell a wrong H. The limit: a model
    that learned the pool's law instead (undoing the selection) scores well below 0.5 with no
    copying, so the relative measures of greedy and threshold assume the model learns its
    selected training set's law."""
    from collapse_jax import scoring
    n, d, trials = 32, 32, 12
    paradigm, configured = paradigms.of_config(loop_section('replace', rule, tau=10.0))
    rng = np.random.default_rng(0)

    def store(draws):
        return ArrayStore({S0: draws}, n=n, pool_size=2 * n, featurize=flat)

    def built(reps):  # reps independent D_{g+1}'s, each from its own pool of 2N draws
        return np.concatenate([paradigms.next_training_set(
            paradigm, configured, 0, store(rng.normal(size=(2 * n, d))), rng=rng,
            seed=int(rng.integers(2 ** 31))).images for _ in range(reps)])
    aucs, shares, unselected, pool_law = [], [], [], []
    for _ in range(trials):
        d_next, model = built(1), built(8)
        held, _ = paradigms.heldout_set(paradigm, configured, 0,
                                        store(rng.normal(size=(16 * n, d))), rng=rng)
        d_model = scoring.nearest_train(model, d_next)[1]
        s = scoring.copy_statistics(d_model, scoring.nearest_train(held, d_next)[1], reps=0)
        aucs.append(s['copy_auc'])
        shares.append(s['copy_share_q05'])
        unselected.append(scoring.copy_statistics(d_model, scoring.nearest_train(
            rng.normal(size=(8 * n, d)), d_next)[1], reps=0)['copy_auc'])
        pool_law.append(scoring.copy_statistics(scoring.nearest_train(
            rng.normal(size=(8 * n, d)), d_next)[1], scoring.nearest_train(held, d_next)[1],
            reps=0)['copy_auc'])
    assert np.mean(aucs) == pytest.approx(0.5, abs=0.025)
    assert np.mean(shares) == pytest.approx(0.05, abs=0.02)
    assert np.mean(unselected) > 0.55  # a held-out set without the selection is no null
    assert np.mean(pool_law) < 0.45


def test_one_and_four_devices_pick_the_same():
    """Candidates split over the 4 (faked) devices (a row count that needs padding): the same
    greedy and threshold picks as on one device, and as the plain rule."""
    import jax
    devs = jax.local_devices()
    assert len(devs) == 4
    x = np.random.default_rng(9).integers(0, 256, (203, 24), dtype=np.uint8)
    one = greedy_select(x, 60, first=5, devices=devs[:1])
    np.testing.assert_array_equal(greedy_select(x, 60, first=5, devices=devs), one)
    np.testing.assert_array_equal(one, naive_greedy(x.astype(np.int64), 60, 5))
    a = selection.threshold_select(x, 50, 900.0, 0.9, seed=3, return_info=True, devices=devs[:1])
    b = selection.threshold_select(x, 50, 900.0, 0.9, seed=3, return_info=True, devices=devs)
    np.testing.assert_array_equal(b[0], a[0])
    assert b[1] == a[1] and a[1]['passes'] > 1

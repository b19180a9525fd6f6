import math

import numpy as np
import pytest

from collapse_jax import scoring


def brute_knn(q, r, k, exclude_self=False):
    d = ((q[:, None, :].astype(np.float64) - r[None].astype(np.float64)) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind='stable')[:, :k]
    return np.take_along_axis(d, idx, 1), idx


@pytest.mark.parametrize('k,exclude', [(1, False), (3, False), (1, True), (2, True)])
def test_knn_matches_brute_force(k, exclude):
    rng = np.random.default_rng(0)
    r = rng.normal(size=(103, 7)).astype(np.float32)
    q = r if exclude else rng.normal(size=(37, 7)).astype(np.float32)
    d, i = scoring.knn(q, r, k=k, exclude_self=exclude, block_q=16, block_r=32)  # ragged blocks
    bd, bi = brute_knn(q, r, k, exclude)
    np.testing.assert_array_equal(np.asarray(i), bi)
    np.testing.assert_allclose(np.asarray(d), bd, rtol=1e-5, atol=1e-5)


def test_near_duplicates_get_exact_distances():
    # pixel-scale data where ||a||^2 + ||b||^2 - 2ab alone would lose a 0.5 offset entirely
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(50, 3072)).astype(np.float32)
    q = base.copy()
    q[:, 0] += 0.5
    d, i = scoring.knn(q, base, k=1)
    np.testing.assert_array_equal(np.asarray(i[:, 0]), np.arange(50))
    np.testing.assert_allclose(np.asarray(d[:, 0]), 0.25, rtol=1e-6)


def gaussian_entropy(d, sigma):
    return 0.5 * d * math.log(2 * math.pi * math.e * sigma ** 2)


@pytest.mark.parametrize('d,sigma', [(1, 1.0), (3, 2.0), (8, 0.5)])
def test_entropy_of_gaussian_matches_closed_form(d, sigma):
    x = np.random.default_rng(d).normal(scale=sigma, size=(6000, d))
    h = scoring.knn_entropy(x)
    assert abs(h - gaussian_entropy(d, sigma)) < 0.06 * d, (h, gaussian_entropy(d, sigma))


def test_entropy_of_uniform_cube():
    x = np.random.default_rng(0).uniform(0, 4.0, size=(6000, 2))
    assert abs(scoring.knn_entropy(x, k=3) - 2 * math.log(4.0)) < 0.05


def test_entropy_removes_and_counts_duplicates():
    x = np.random.default_rng(0).normal(size=(500, 4))
    with_dups = np.concatenate([x, x[:20], x[:5]])
    h, dup = scoring.knn_entropy(with_dups, dedup=True, return_duplicates=True)
    assert dup == 25 == scoring.count_duplicates(with_dups)
    assert np.isfinite(h) and h == pytest.approx(scoring.knn_entropy(x), abs=1e-6)


def test_entropy_refuses_too_few_distinct_points():
    x = np.tile(np.arange(6.0), (5, 1))  # five copies of one point, then two distinct points
    for k, rows, dedup in ((1, x, False), (1, x, True), (2, np.concatenate([x, x[:1] + 1]), False)):
        with pytest.raises(ValueError, match=f'more than k={k} distinct points'):
            scoring.knn_entropy(rows, k=k, dedup=dedup)
    assert np.isfinite(scoring.knn_entropy(np.concatenate([x, x[:1] + 1]), k=1, dedup=True))


def test_paper_entropy_keeps_copies_and_takes_log_eps_plus_1e10():
    """The reference's form: every row counts, log(eps + 1e-10), so copies pull it down."""
    x = np.random.default_rng(3).integers(0, 256, (128, 16)).astype(np.float64)
    with_copies = np.concatenate([x, x[:4]])
    n, d = with_copies.shape
    dist = np.sqrt(((with_copies[:, None] - with_copies[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    eps = dist.min(1)
    assert (eps == 0).sum() == 8  # 4 copies and their originals
    from scipy.special import digamma, gammaln
    want = (digamma(n) - digamma(1) + 0.5 * d * np.log(np.pi) - gammaln(0.5 * d + 1)
            + d * np.mean(np.log(eps + 1e-10)))
    h = scoring.knn_entropy(with_copies)
    assert h == pytest.approx(want, rel=1e-9)
    assert scoring.knn_entropy(with_copies, dedup=True) - h > 8 * d / n * 20  # copies cost much


def test_gs_and_memorization_against_brute_force():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(60, 10)).astype(np.float32)
    gen = rng.normal(size=(40, 10)).astype(np.float32)
    gen[:10] = train[:10] + 1e-3 * rng.normal(size=(10, 10))  # near-copies
    gen[10] = train[11]  # an exact copy
    d, _ = brute_knn(gen, train, 2)
    assert scoring.generalization_score(gen, train, 'mse') == pytest.approx(
        np.mean(d[:, 0] / 10), rel=1e-5)
    assert scoring.generalization_score(gen, train, 'l2') == pytest.approx(
        np.mean(np.sqrt(d[:, 0])), rel=1e-5)
    ratio = np.sqrt(d[:, 0]) / np.sqrt(d[:, 1])
    expected = np.mean(ratio < 1 / 3)
    assert expected >= 11 / 40
    assert scoring.memorization_fraction(gen, train) == pytest.approx(expected)


def test_bad_metric_is_rejected():
    with pytest.raises(ValueError, match="'mse', 'l2'"):
        scoring.generalization_score(np.zeros((2, 2)), np.ones((2, 2)), metric='cos')


def test_frechet_distance_matches_the_closed_form_and_scipy():
    import scipy.linalg
    rng = np.random.default_rng(0)
    a = rng.normal(size=(600, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 0.7
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # non-commuting covariances
    want = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * scipy.linalg.sqrtm(s_a @ s_b).real)
    assert scoring.frechet_distance(a, b) == pytest.approx(want, rel=1e-6)
    assert abs(scoring.frechet_distance(a, a)) < 1e-8
    # Gaussians with diagonal covariances: |mu_a - mu_b|^2 + sum (sd_a - sd_b)^2
    # = 1 + (1 - 2)^2 + 0 + (3 - 1)^2 = 6, approached by the sample estimate
    x = rng.normal(size=(20000, 3)) * [1.0, 2.0, 3.0]
    y = rng.normal(size=(20000, 3)) * [2.0, 2.0, 1.0] + [1.0, 0.0, 0.0]
    assert scoring.frechet_distance(x, y) == pytest.approx(6.0, rel=0.02)


def test_precision_recall_against_brute_force():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(300, 5))
    fake = rng.normal(size=(250, 5)) * 0.6 + 0.4  # a narrower, shifted distribution
    k = 3

    def brute(ref, q):
        d = np.sqrt(((ref[:, None] - ref[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        radius = np.sort(d, 1)[:, k - 1]
        dq = np.sqrt(((q[:, None] - ref[None]) ** 2).sum(-1))
        return np.mean((dq <= radius[None]).any(1))

    p, r = scoring.precision_recall(real, fake, k=k)
    assert p == pytest.approx(brute(real, fake)) and r == pytest.approx(brute(fake, real))
    assert p > r  # narrow fakes sit inside the real manifold but do not cover it
    assert scoring.precision_recall(real, real, k=k) == (1.0, 1.0)


@pytest.mark.parametrize('n,k,block', [(100, 1, 32), (100, 3, 32), (64, 2, 64), (7, 1, 1024)])
def test_symmetric_self_knn_matches_brute_force(n, k, block):
    x = np.random.default_rng(n + k).normal(size=(n, 5)).astype(np.float32)
    d, i = scoring.self_knn(x, k=k, block=block)  # ragged last block, several block pairs
    bd, bi = brute_knn(x, x, k, True)
    np.testing.assert_array_equal(np.asarray(i), bi)
    np.testing.assert_allclose(np.asarray(d), bd, rtol=1e-5, atol=1e-6)


def test_data_copying_z_is_the_mann_whitney_z_of_nearest_training_distances():
    from scipy.stats import mannwhitneyu, norm
    rng = np.random.default_rng(0)
    train, gen, held = rng.normal(size=(60, 5)), rng.normal(size=(40, 5)), rng.normal(size=(50, 5))
    gen[:5] = train[:5]  # exact copies: ties at distance 0 exercise the tie correction
    held[:3] = train[10:13]
    z = scoring.data_copying_z(gen, train, held)
    d_gen = np.sqrt(((gen[:, None] - train[None]) ** 2).sum(-1)).min(1)
    d_held = np.sqrt(((held[:, None] - train[None]) ** 2).sum(-1)).min(1)
    res = mannwhitneyu(d_gen, d_held, method='asymptotic', use_continuity=False)
    assert 2 * norm.sf(abs(z)) == pytest.approx(res.pvalue, rel=1e-6)
    assert np.sign(z) == np.sign(res.statistic - 40 * 50 / 2)


def test_data_copying_z_tells_copies_fresh_draws_and_far_sets_apart():
    rng = np.random.default_rng(1)
    draw = lambda n: rng.normal(size=(n, 8))  # noqa: E731
    train, held = draw(200), draw(200)
    copies = train[rng.choice(200, 200)] + 0.01 * rng.normal(size=(200, 8))
    assert scoring.data_copying_z(copies, train, held) < -10     # copying
    assert abs(scoring.data_copying_z(draw(200), train, held)) < 3  # generalizing
    assert scoring.data_copying_z(draw(200) * 3.0, train, held) > 10  # underfit, far away


def test_participation_ratio_of_a_known_covariance():
    rng = np.random.default_rng(2)
    lam = np.array([4.0, 2.0, 1.0, 1.0, 0.0, 0.0])
    x = rng.normal(size=(20000, 6)) * np.sqrt(lam)
    want = lam.sum() ** 2 / (lam ** 2).sum()  # 64 / 22
    assert scoring.participation_ratio(x) == pytest.approx(want, rel=0.03)
    wide = rng.normal(size=(50, 200)) * rng.uniform(0.1, 2, 200)  # n < d: the Gram-of-rows path
    lam = np.linalg.eigvalsh(np.cov(wide.T))
    assert scoring.participation_ratio(wide) == pytest.approx(lam.sum() ** 2 / (lam ** 2).sum(),
                                                              rel=1e-5)  # float32 on the device


def test_copy_statistics_against_pair_counting_and_quantiles():
    rng = np.random.default_rng(2)
    d_gen, d_held = rng.gamma(2.0, size=300), rng.gamma(2.5, size=1000)
    d_gen[:20] = d_held[:20]  # ties count 1/2
    s = scoring.copy_statistics(d_gen, d_held)
    diff = d_gen[:, None] - d_held[None]
    assert s['copy_auc'] == pytest.approx(np.mean((diff > 0) + 0.5 * (diff == 0)), abs=1e-12)
    for q in (0.05, 0.01):
        cut = np.sort(d_held)[int(q * 999)] + q * 999 % 1 * np.diff(np.sort(d_held))[int(q * 999)]
        assert s[f'copy_share_q{round(100 * q):02d}'] == pytest.approx(np.mean(d_gen < cut))
    assert s['copy_heldout_median'] == pytest.approx(np.median(d_held))
    # Z depends on the sizes, AUC does not: the same two laws with a tenth of the held-out set
    small = scoring.copy_statistics(d_gen, d_held[200:300])
    assert abs(s['copy_z']) > 1.4 * abs(small['copy_z'])
    assert small['copy_auc'] == pytest.approx(s['copy_auc'], abs=0.05)


def test_copy_shares_sit_at_their_null_for_fresh_draws_and_rise_for_copies():
    rng = np.random.default_rng(3)
    train, held = rng.normal(size=(300, 6)), rng.normal(size=(2000, 6))
    d_held = scoring.nearest_train(held, train)[1]
    fresh = scoring.copy_statistics(scoring.nearest_train(rng.normal(size=(2000, 6)), train)[1],
                                    d_held)
    assert fresh['copy_share_q05'] == pytest.approx(0.05, abs=0.02)
    assert fresh['copy_auc'] == pytest.approx(0.5, abs=0.03)
    copies = train[rng.choice(300, 500)] + 0.05 * rng.normal(size=(500, 6))
    copied = scoring.copy_statistics(scoring.nearest_train(copies, train)[1], d_held)
    assert copied['copy_share_q01'] > 0.9 and copied['copy_auc'] < 0.05


def test_bootstrap_intervals_hold_the_estimate_and_have_the_null_width():
    """Under the null (both sets one law) the AUC's sd is sqrt((m + n + 1) / (12mn)); the 95%
    interval's width is about 2 x 1.96 of it. Intervals hold their estimate, and a copy's
    interval lies wholly below 0.5."""
    rng = np.random.default_rng(4)
    m, n = 400, 1600
    s = scoring.copy_statistics(rng.gamma(2.0, size=m), rng.gamma(2.0, size=n))
    want = 2 * 1.96 * np.sqrt((m + n + 1) / (12 * m * n))
    assert s['copy_auc_hi'] - s['copy_auc_lo'] == pytest.approx(want, rel=0.2)
    for key in ('copy_auc', 'copy_share_q05', 'copy_share_q01'):
        assert s[f'{key}_lo'] <= s[key] <= s[f'{key}_hi']
    assert s['copy_auc_lo'] < 0.5 < s['copy_auc_hi']
    near = scoring.copy_statistics(rng.gamma(2.0, size=m) * 0.5, rng.gamma(2.0, size=n))
    assert near['copy_auc_hi'] < 0.5 and near['copy_share_q05_lo'] > 0.05
    assert scoring.copy_statistics(rng.gamma(2.0, size=m), rng.gamma(2.0, size=n),
                                   reps=0).keys() == {'copy_z', 'copy_auc', 'copy_share_q05',
                                                      'copy_share_q01', 'copy_heldout_median'}


def test_one_and_four_devices_give_the_same_neighbours_and_measures(monkeypatch):
    """The queries split over the 4 (faked) devices: the same neighbours and distances as on one,
    and the same entropy, GS, memorization and precision/recall built on them."""
    import jax
    devs = jax.local_devices()
    assert len(devs) == 4
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (203, 48), dtype=np.uint8)
    q = rng.integers(0, 256, (101, 48), dtype=np.uint8)
    for a, b, k, ex in [(q, x, 1, False), (q, x, 3, False), (x, x, 2, True)]:
        d1, i1 = scoring.knn(a, b, k=k, exclude_self=ex, devices=devs[:1])
        d4, i4 = scoring.knn(a, b, k=k, exclude_self=ex, devices=devs)
        np.testing.assert_array_equal(np.asarray(i4), np.asarray(i1))
        np.testing.assert_array_equal(np.asarray(d4), np.asarray(d1))
        bd, bi = brute_knn(a.astype(np.float32), b.astype(np.float32), k, ex)
        np.testing.assert_array_equal(np.asarray(i4), bi)
    s1, j1 = scoring.self_knn(x, k=2, devices=devs[:1])  # the symmetric one-device path
    s4, j4 = scoring.self_knn(x, k=2, devices=devs)
    np.testing.assert_array_equal(np.asarray(j4), np.asarray(j1))
    np.testing.assert_array_equal(np.asarray(s4), np.asarray(s1))

    def measures():
        return (scoring.knn_entropy(x), scoring.generalization_score(q, x, 'mse'),
                scoring.memorization_fraction(q, x), scoring.precision_recall(x, q, k=3))
    four = measures()
    from collapse_jax import neighbours
    monkeypatch.setattr(neighbours, '_devices', lambda devices: tuple(devs[:1]))
    assert measures() == four

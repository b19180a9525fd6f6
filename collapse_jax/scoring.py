"""The measures built on exact nearest neighbours (neighbours.py): entropy, GS, memorization,
relative copying, FD, precision/recall, effective dimension."""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import jax
import jax.numpy as jnp

from collapse_jax.neighbours import HIGHEST, _pad_rows, knn, self_knn  # noqa: F401


def _flat(x):
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f'expected a non-empty array [n, ...], got shape {x.shape}')
    x = x.reshape(x.shape[0], -1)
    return x if x.dtype == np.uint8 else x.astype(np.float32)  # uint8 ships as is (4x fewer bytes)


def unique_rows(x) -> np.ndarray:
    """Indices of the first occurrence of each distinct row, in their original order."""
    x = np.ascontiguousarray(_flat(x))
    _, first = np.unique(x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel(),
                         return_index=True)
    return np.sort(first)


def count_duplicates(x) -> int:
    """Rows that exactly repeat an earlier row."""
    return int(_flat(x).shape[0] - unique_rows(x).shape[0])


def _digamma_int(n: int) -> float:
    return -0.5772156649015329 + float(np.sum(1.0 / np.arange(1, n, dtype=np.float64)))


def nn_distances(x, k: int = 1) -> np.ndarray:
    """float64 L2 distance of each row of x to its k-th nearest *other* row (leave-one-out)."""
    sq, _ = self_knn(_flat(x), k=k)
    return np.sqrt(np.asarray(sq[:, k - 1], np.float64))


def entropy_from_distances(eps, d: int, k: int = 1, floor: float = 0.0) -> float:
    """H = psi(n) - psi(k) + log c_d + (d/n) sum_i log(eps_i + floor),
    c_d = pi^(d/2) / Gamma(d/2 + 1)."""
    eps = np.asarray(eps, np.float64)
    log_cd = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1)
    return (_digamma_int(len(eps)) - _digamma_int(k) + log_cd
            + d * float(np.mean(np.log(eps + floor))))


PAPER_FLOOR = 1e-10  # the reference's log(eps + 1e-10): an exact copy counts, heavily


def knn_entropy(x, k: int = 1, dedup: bool = False, return_duplicates: bool = False):
    """Kozachenko-Leonenko differential entropy (nats) of the rows of x, in x's own units.

    dedup=False (the paper's form, as the reference's knn_entropy_estimator.py): every row
    counts and log(eps + 1e-10) is taken, so exact copies (eps = 0) pull the entropy down hard.
    dedup=True: exact duplicates are removed first (a copy adds no new point to the support).
    With return_duplicates, also the number of rows that repeat an earlier row.
    """
    x = _flat(x)
    sq = None if dedup or x.shape[0] <= k else self_knn(x, k=k)[0]  # runs while the host
    keep = unique_rows(x)                                              # looks for duplicates
    if len(keep) <= k:
        raise ValueError(f'knn_entropy needs more than k={k} distinct points, got {len(keep)}')
    if dedup:
        sq = self_knn(x[keep], k=k)[0]
    eps = np.sqrt(np.asarray(sq[:, k - 1], np.float64))
    h = entropy_from_distances(eps, x.shape[1], k, 0.0 if dedup else PAPER_FLOOR)
    return (h, x.shape[0] - len(keep)) if return_duplicates else h


def generalization_score(generated, train, metric: str = 'mse') -> float:
    """Mean over generated samples of the distance to the nearest training sample:
    'mse' = mean squared difference per coordinate, 'l2' = Euclidean distance."""
    if metric not in ('mse', 'l2'):
        raise ValueError(f"metric={metric!r}; allowed: 'mse', 'l2'")
    g, t = _flat(generated), _flat(train)
    sq, _ = knn(g, t, k=1)
    sq = np.asarray(sq[:, 0], np.float64)
    return float(np.mean(sq / g.shape[1]) if metric == 'mse' else np.mean(np.sqrt(sq)))


def memorization_fraction(generated, train, ratio: float = 1 / 3) -> float:
    """Share of generated samples whose nearest training image is much closer than the second
    nearest: d1 / d2 < ratio (an exact copy, d1 = 0, always counts)."""
    return memorized_share(nearest_two(generated, train)[1], ratio)


def nearest_two(generated, train):
    """Indices [n, 2] of (and L2 distances [n, 2] to) each generated sample's two nearest
    training samples: one search serves GS, the memorization test and the nearest grid."""
    sq, idx = knn(_flat(generated), _flat(train), k=2)
    return np.asarray(idx), np.sqrt(np.asarray(sq, np.float64))


def memorized_share(d, ratio: float = 1 / 3) -> float:
    """Share of rows of nearest/second-nearest distances d [n, 2] with d1 / d2 < ratio (or d1 = 0)."""
    return float(np.mean((d[:, 0] < ratio * d[:, 1]) | (d[:, 0] == 0)))


def nearest_train(generated, train):
    """Index of (and L2 distance to) each generated sample's nearest training sample."""
    sq, idx = knn(_flat(generated), _flat(train), k=1)
    return np.asarray(idx[:, 0]), np.sqrt(np.asarray(sq[:, 0], np.float64))


def frechet_distance(a, b) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (rows), in float64.
    tr (S_a S_b)^(1/2) = sum sqrt(eig(A S_b A)) with A = S_a^(1/2): symmetric eigen-decompositions
    only, no general sqrtm and no complex parts."""
    a, b = _flat(a).astype(np.float64), _flat(b).astype(np.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f'feature sizes differ: {a.shape[1]} vs {b.shape[1]}')
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    s_a, s_b = np.atleast_2d(s_a), np.atleast_2d(s_b)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ s_b @ root_a
    tr_root = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None))))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * tr_root)


@partial(jax.jit, static_argnames=('block_q',))
def _in_any_ball(queries, centers, radii_sq, block_q: int = 256):
    """For each query: is ||q - c||^2 <= r_c^2 for some center c? (HIGHEST precision, centred)."""
    queries, centers = jnp.asarray(queries, jnp.float32), jnp.asarray(centers, jnp.float32)
    nq = queries.shape[0]
    block_q = min(block_q, nq)
    mu = jnp.mean(centers, axis=0)
    q, c = _pad_rows(queries - mu, block_q), centers - mu
    cn = jnp.sum(c * c, axis=1)

    def one(qb):
        d = jnp.sum(qb * qb, 1)[:, None] + cn[None] - 2.0 * jnp.matmul(qb, c.T, precision=HIGHEST)
        return jnp.any(jnp.maximum(d, 0.0) <= radii_sq[None], axis=1)

    return jax.lax.map(one, q.reshape(-1, block_q, q.shape[1])).reshape(-1)[:nq]


def precision_recall(real, generated, k: int = 3):
    """k-NN manifold precision and recall (Kynkäänniemi et al. 2019): precision is the share of
    generated samples inside some real sample's ball (radius = distance to its k-th nearest other
    real sample), recall the share of real samples inside some generated sample's ball."""
    r, g = _flat(real), _flat(generated)
    r_rad, _ = self_knn(r, k=k)
    g_rad, _ = self_knn(g, k=k)
    precision = float(np.mean(np.asarray(_in_any_ball(g, r, r_rad[:, k - 1]))))
    recall = float(np.mean(np.asarray(_in_any_ball(r, g, g_rad[:, k - 1]))))
    return precision, recall


def data_copying_z(generated, train, heldout) -> float:
    """The data-copying test of Meehan, Chaudhuri and Dasgupta (AISTATS 2020), global form: the
    Mann-Whitney Z_U of the generated samples' nearest-training distances against those of a
    held-out set drawn from the training set's own distribution. Z << 0: the samples sit closer
    to their training set than fresh draws do (copying); Z ~ 0: as close as fresh draws
    (generalizing); Z >> 0: farther (underfit). Any units; rows are samples."""
    return relative_copying(generated, train, heldout)['copy_z']


def relative_copying(generated, train, heldout) -> dict:
    """copy_statistics of the generated samples' and the held-out images' nearest-training
    distances (rows are samples, any units)."""
    t = _flat(train)
    return copy_statistics(nearest_train(_flat(generated), t)[1],
                           nearest_train(_flat(heldout), t)[1])


def copy_statistics(d_gen, d_held, reps: int = 1000) -> dict:
    """Relative copying, from each generated sample's and each held-out image's distance to its
    nearest training image: how much closer the samples sit than fresh draws of the process
    that made the training set.

    copy_z: Meehan's Mann-Whitney Z (tie-corrected normal approximation). Its scale grows with
      the sample sizes (|Z| <= sqrt(3mn / (m + n + 1))), so compare it only at equal sizes.
    copy_auc: U / (mn), the chance that a sample sits farther than a held-out image (ties 1/2);
      0.5 under the null, < 0.5 closer (copying), comparable across sizes.
    copy_share_q05 / q01: the share of samples closer than the held-out 5% / 1% quantile; the
      null is 0.05 / 0.01. copy_heldout_median: the held-out median distance (input units).
    <key>_lo / <key>_hi for copy_auc and both tail shares: a 95% percentile-bootstrap interval,
      `reps` resamplings of the samples and of the held-out images, each with replacement (both
      are random draws), from a fixed seed so that a record is reproducible."""
    from scipy.stats import rankdata
    d_gen, d_held = np.asarray(d_gen, np.float64), np.asarray(d_held, np.float64)
    m, n = len(d_gen), len(d_held)
    both = np.concatenate([d_gen, d_held])
    u = float(np.sum(rankdata(both)[:m]) - m * (m + 1) / 2)
    _, counts = np.unique(both, return_counts=True)
    var = m * n / 12.0 * ((m + n + 1) - np.sum(counts ** 3 - counts) / ((m + n) * (m + n - 1)))
    out = dict(copy_z=float((u - m * n / 2.0) / np.sqrt(var)) if var > 0 else 0.0,
               **_auc_and_shares(d_gen, np.sort(d_held)),
               copy_heldout_median=float(np.median(d_held)))
    rng = np.random.default_rng(0)
    boot = [_auc_and_shares(d_gen[rng.integers(m, size=m)],
                            np.sort(d_held[rng.integers(n, size=n)])) for _ in range(reps)]
    for key in boot[0] if reps else ():
        lo, hi = np.percentile([b[key] for b in boot], [2.5, 97.5])
        out.update({f'{key}_lo': float(lo), f'{key}_hi': float(hi)})
    return out


def _auc_and_shares(d_gen, held_sorted) -> dict:
    """copy_auc (ties count 1/2) and the tail shares, from held-out distances sorted."""
    below = np.searchsorted(held_sorted, d_gen, 'left')
    below_or_tied = np.searchsorted(held_sorted, d_gen, 'right')
    auc = float(np.sum(below + below_or_tied)) / (2.0 * len(d_gen) * len(held_sorted))
    return dict(copy_auc=auc, **{f'copy_share_q{round(100 * q):02d}':
                                 float(np.mean(d_gen < np.quantile(held_sorted, q)))
                                 for q in (0.05, 0.01)})


def participation_ratio(x) -> float:
    """Effective dimension (sum l)^2 / sum l^2 of the covariance eigenvalues l of the rows of x:
    (tr C)^2 / ||C||_F^2, from the Gram matrix of the centred rows (cheap when n < d). On the
    device in float32 (uint8 shipped as is): no float64 copy of the set on the host."""
    return float(_participation_ratio(jnp.asarray(_flat(x))))


@jax.jit
def _participation_ratio(x):
    x = x.astype(jnp.float32)
    x = x - jnp.mean(x, axis=0)
    gram = (jnp.matmul(x, x.T, precision=HIGHEST) if x.shape[0] < x.shape[1] else
            jnp.matmul(x.T, x, precision=HIGHEST))  # the same nonzero spectrum as C
    tr = jnp.trace(gram)
    return jnp.where(tr > 0, tr ** 2 / jnp.sum(gram * gram), 0.0)

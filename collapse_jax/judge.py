"""What is measured: one `Judge` per run owns the reference sets (held-out real images for the
FD, its noise floor and the copy measures, the calibrated copy distance) and the featurizers, and
computes a generation's record from arrays. No drawing, no timing, no files: the loop orders the
phases and writes; calibrate and the study use the same object.
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from collapse_jax import data, features, measure, paradigms, scoring, streams
from collapse_jax.store import FRESH, REAL, ArrayStore, Source


def pixel_variance(images) -> float:
    """Trace of the pixel covariance, pixels in [-1, 1]; on the device in float32."""
    return float(_pixel_variance(jnp.asarray(features.pixel(images))))


@jax.jit
def _pixel_variance(x):
    return jnp.sum(jnp.var(x.astype(jnp.float32) / data.PM1, axis=0))


def copying(sample, train, held, what, threshold=None) -> dict:
    """Relative copying (scoring.copy_statistics, pixels) of `sample` against `train`, with the
    held-out set `held` (described by `what`), and the absolute measures' nulls: the same
    measures of `held` (fresh draws of the process that made `train`) against `train`:
    gs_l2_null (GS, L2 in [-1, 1]) and memorization_calibrated_null (the share within the
    calibrated distance `threshold`, 0-255 L2). None when there is no held-out set."""
    if held is None or len(held) < 2:
        return dict(copy_z=None, copy_heldout=what or 'none (no held-out images left)',
                    gs_l2_null=None, memorization_calibrated_null=None)
    t = features.pixel(train)
    d_held = scoring.nearest_train(features.pixel(held), t)[1]
    return dict(scoring.copy_statistics(scoring.nearest_train(features.pixel(sample), t)[1],
                                        d_held),
                copy_heldout=what, copy_heldout_n=int(len(held)),
                gs_l2_null=float(np.mean(d_held)) / data.PM1,
                memorization_calibrated_null=None if threshold is None else
                float(np.mean(d_held < threshold)))


class Judge:
    """A run's measures. `real` is the run's data.RealSplit; the held-out parts come after
    every image the run can train on: the FD reference (E_g's size, or score.fd_n), a second set
    of that size for the FD's noise floor, and max(N, eval_n) held-out real images for the copy
    measures at generation 0 and the real part of later held-out replicas."""

    def __init__(self, cfg, real: data.RealSplit):
        self.cfg, self.d0 = cfg, real.d0()[0]
        self.featurize = features.for_config(cfg, cfg.loop.feature_space)
        self.scorer = features.for_config(cfg, features.score_space(cfg))
        size = cfg.score.eval_n or cfg.data.n * cfg.loop.pool_factor
        size = min(size, cfg.score.fd_n or size)
        parts = real.held_out(reference=size, floor=size,
                              mirror=max(cfg.data.n, cfg.score.eval_n))
        if len(parts['reference']) < 2:
            self.reference = dict(images=self.d0, name='D_0 (no held-out real images left)')
        else:
            self.reference = dict(images=real.images[parts['reference']],
                                  name=f'held-out real, n={len(parts["reference"])}')
        self.floor_images = real.images[parts['floor']] if len(parts['floor']) == len(
            parts['reference']) else None
        self.heldout_real = real.images[parts['mirror']]
        self._cache = {}  # per-run constants: reference features, FD floor, copy threshold

    def _once(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def record(self, g, d_g, store):
        """(generation g's record, each pool image's nearest D_g index, H_g or None) of D_g
        (a layout.TrainSet) and the pool S_g and evaluation sample E_g in `store` (a
        store.Store with `eval`). Pixels (entropy: nats, 0-255; GS, variance: [-1, 1]): D_g's
        entropy, S_g's GS, gs_ratio, memorization (ratio test and calibrated), effective
        dimension and intensity; relative copying against H_g (`heldout`) and the absolute
        measures' nulls on it; in the selection's feature space: entropy and GS; in the score
        space: FD (beside its floor) and precision/recall of E_g (S_g if there is none), and
        recognizable; for digits (1 channel), GS in the digits classifier's space (gs_digits)."""
        cfg, fz = self.cfg, self.featurize
        pool, sample = store.images(Source.pool(g))[0], store.eval(g)
        held = self.heldout(g, store)
        px, nn_idx = measure.pixel_measures(d_g.images, pool, cfg.score.k, cfg.score.mem_ratio,
                                            copy_threshold=self.copy_threshold(),
                                            return_nearest=True)
        rec = dict(
            generation=g, paradigm=cfg.loop.paradigm, selection=cfg.loop.selection,
            feature_space=fz.name, fd_space=self.scorer.name,
            units=f'entropy: nats, pixels in [0, 255]; gs/variance: pixels in [-1, 1]; '
                  f'mean_intensity, copy_threshold: 0-255; *_feat: {fz.name} features; fd, '
                  f'precision, recall: {self.scorer.name} features',
            n_train=int(len(d_g.images)), n_pool=int(len(pool)), **px,
            pool_variance=pixel_variance(pool), train_variance=pixel_variance(d_g.images),
            real_share=float(np.mean(np.isin(d_g.source, (REAL.code, FRESH.code)))),
            how_built={k: v for k, v in d_g.info.items() if k != 'select_s'},
            select_s=d_g.info.get('select_s'),
            sampler=dict(steps=cfg.sample.steps, clip_x0=cfg.sample.clip_x0,
                         variance=cfg.sample.variance, guidance=cfg.sample.guidance))
        rec.update(copying(pool, d_g.images, *held, self.copy_threshold()))
        rec.update(self.fidelity((pool if sample is None else sample)[:cfg.score.fd_n or None]))
        train_f = fz(d_g.images)
        pool_f = np.asarray(store.features(Source.pool(g)))
        rec.update(measure.space_measures(train_f, pool_f, cfg.score.k))
        if cfg.data.channels == 1:  # a GS that does not share the pixel entropy's geometry
            if fz.name != 'digits':
                dz = features.get('digits', cfg.features, cfg.features.batch_size)
                train_f, pool_f = dz(d_g.images), dz(pool)
            rec['gs_digits'] = scoring.generalization_score(pool_f, train_f, 'l2')
        return rec, nn_idx, held[0]

    def heldout(self, g, store):
        """(H_g, what it is): held-out real images at generation 0; later D_g's construction
        repeated on independent draws (paradigms.heldout_set): the evaluation samples E_i of
        generation g - 1's sources in `store`, and held-out real images for D_0 and fresh ones."""
        cfg = self.cfg
        if g == 0:
            return self.heldout_real, 'held-out real'
        if not cfg.score.eval_n:
            return None, 'none (score.eval_n = 0)'
        paradigm, rule = paradigms.of_config(cfg.loop)
        draws = ArrayStore({s: store.eval(s.code) for s in paradigm.sources(g - 1) if s.is_pool}
                           | {REAL: self.heldout_real},
                           n=store.n, pool_size=store.pool_size, featurize=self.featurize,
                           fresh_n=store.fresh_n)
        return paradigms.heldout_set(paradigm, rule, g - 1, draws,
                                     rng=streams.numpy_rng(cfg.seed, 'mirror', g - 1))

    def fidelity(self, sample) -> dict:
        """FD and precision/recall of `sample` against the held-out reference, the FD between two
        real sets of the same size (its noise floor), and the share of samples (and of real
        digits) the digits classifier labels with p >= 0.9."""
        sc, cfg = self.scorer, self.cfg
        ref = self._once('reference_feats', lambda: sc(self.reference['images']))
        out = measure.fd_measures(sc(sample), ref, cfg.score.pr_k)
        out.update(fd_reference=self.reference['name'], feature_info={
            self.featurize.name: self.featurize.info, sc.name: sc.info},
            fd_sample='evaluation sample E_g' if cfg.score.eval_n else 'pool S_g',
            fd_floor=self._once('fd_floor', lambda: None if self.floor_images is None else
                                scoring.frechet_distance(sc(self.floor_images), ref)))
        if cfg.data.channels == 1:
            out['recognizable'] = features.recognizable(sample, cfg.features,
                                                        cfg.features.batch_size)
            out['recognizable_real'] = self._once('recognizable_real', lambda: (
                features.recognizable(self.reference['images'], cfg.features,
                                      cfg.features.batch_size)))
        return out

    def copy_threshold(self):
        """memorization_calibrated's distance (0-255 L2), from real images, once per run."""
        return self._once('copy_threshold', lambda: measure.copy_threshold(
            self.d0, self.heldout_real, self.cfg.score.mem_ratio)
            if len(self.heldout_real) else None)

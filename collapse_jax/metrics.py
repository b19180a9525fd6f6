"""Every key of a generation's record, in one registry: its title (with its unit) and the views that
show it.

Views: 'curves' (a panel of curves.png and compare.png, in this order), 'table' (report.html's
and compare.html's table), 'log' (the line logged when a generation is scored), 'study' (the
study's results.json and results.csv rows), 'calibrate' (the calibration's log line) and 'time'
(wall times, left out where records are compared). A key with no view is kept in the record
for provenance. judge.Judge and loop.Run write the record; a test checks that a tiny run's
records hold exactly these keys.
"""
from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    key: str
    title: str = ''
    views: tuple = ()
    floor: str | None = None  # drawn dashed in this key's panel
    short: str = ''           # the title in the study's small panels


_T = ('table',)
_CORE = ('curves', 'table', 'study')
REGISTRY = (
    Metric('generation', 'generation', _T),
    Metric('train_entropy', 'training-set entropy (nats, pixels 0-255, paper form)',
           _CORE + ('log',)),
    Metric('train_entropy_dedup', 'training-set entropy, duplicates removed',
           ('table', 'study')),
    Metric('gs_l2', 'GS: L2 to nearest training image (pixels in [-1, 1]); dashed: null',
           _CORE + ('log',), floor='gs_l2_null'),
    Metric('gs_l2_null', "null: held-out H_g's GS against D_g (pixels in [-1, 1])",
           ('table', 'study')),
    Metric('gs_mse', 'GS: MSE to nearest training image (pixels in [-1, 1])',
           ('table', 'study'), short='GS (MSE, pixels)'),
    Metric('gs_ratio', "GS / training set's own nearest spacing",
           _CORE + ('log', 'calibrate')),
    Metric('memorization', 'memorized share (ratio test d1/d2 < score.mem_ratio)',
           _CORE + ('log', 'calibrate')),
    Metric('memorization_calibrated', 'memorized share (d1 < calibrated distance); dashed: null',
           _CORE + ('log', 'calibrate'), floor='memorization_calibrated_null',
           short='absolute: memorized share (calibrated)'),
    Metric('memorization_calibrated_null', "null: held-out H_g's share within the calibrated "
           'distance of D_g', ('table', 'study', 'log', 'calibrate')),
    Metric('train_near_copy_share', 'share of D_g with another D_g image within the calibrated '
           'distance', ('table', 'study')),
    Metric('copy_z', 'data-copying Z (<< 0 copying, ~0 generalizing; size-dependent)',
           _CORE + ('log', 'calibrate'), short='copy_z (<< 0: copying; size-dependent)'),
    Metric('copy_auc', 'copy AUC against fresh draws (0.5 null, < 0.5 copying)',
           _CORE + ('calibrate',), short='relative: copy AUC (0.5 null)'),
    Metric('copy_share_q05', 'share closer than the held-out 5% quantile (null 0.05)',
           ('table', 'study', 'calibrate'),
           short='relative: share < held-out 5% quantile (null 0.05)'),
    Metric('copy_share_q01', 'share closer than the held-out 1% quantile (null 0.01)',
           _CORE),
    # 95% bootstrap intervals (scoring.copy_statistics)
    *(Metric(f'{k}_{end}', f'{k}: 95% bootstrap interval, {"lower" if end == "lo" else "upper"}',
             ('study',)) for k in ('copy_auc', 'copy_share_q05', 'copy_share_q01')
      for end in ('lo', 'hi')),
    Metric('copy_heldout_n', 'held-out images behind the copy measures', ('study',)),
    Metric('copy_heldout_median', "held-out images' median distance to D_g",
           ('study',)),
    Metric('copy_heldout', 'what the held-out set is'),
    Metric('copy_threshold', "memorization_calibrated's distance"),
    Metric('participation_ratio', 'effective dimension of the samples',
           _CORE + ('calibrate',)),
    Metric('train_participation_ratio', 'effective dimension of the training set',
           ('study',)),
    Metric('mean_intensity', 'mean pixel intensity of the samples (0-255)',
           _CORE + ('calibrate',)),
    Metric('train_mean_intensity', 'mean pixel intensity of the training set',
           ('study',)),
    Metric('real_share', 'share of real images in the training set', _CORE),
    Metric('fd', 'Frechet distance to held-out real ({fd_space}); dashed: floor',
           _CORE + ('log', 'calibrate'), floor='fd_floor'),
    Metric('fd_floor', 'FD between two held-out real sets of the same size',
           ('table', 'study', 'log', 'calibrate')),
    Metric('fd_n', 'samples behind the FD', ('study',)),
    Metric('recognizable', 'recognizable share (digits classifier p >= 0.9)',
           _CORE + ('log', 'calibrate'), floor='recognizable_real'),
    Metric('recognizable_real', 'recognizable share of held-out real digits',
           ('table', 'study', 'calibrate')),
    Metric('precision', 'precision, k-NN manifold ({fd_space})', _CORE),
    Metric('recall', 'recall, k-NN manifold ({fd_space})', _CORE),
    Metric('pool_variance', 'sample variance: trace of covariance ([-1, 1])',
           ('curves',)),
    Metric('train_variance', 'training-set variance: trace of covariance ([-1, 1])'),
    Metric('train_entropy_feat', 'training-set entropy (nats, {feature_space})', _CORE),
    Metric('gs_mse_feat', 'GS: MSE to nearest training image ({feature_space})', _CORE),
    Metric('gs_l2_feat', 'GS: L2 to nearest training image ({feature_space})'),
    Metric('gs_digits', "GS: L2 to nearest training image (digits classifier's space)",
           ('study',)),
    Metric('pool_entropy', 'pool entropy (nats, pixels 0-255)'),
    Metric('pool_entropy_dedup', 'pool entropy, duplicates removed'),
    Metric('train_duplicates', 'exact duplicates in the training set', _T),
    Metric('pool_duplicates', 'exact duplicates in the pool', _T),
    Metric('final_loss', "the generation's last training loss", _T),
    Metric('train_s', 'training wall time', ('table', 'time')),
    Metric('sample_s', 'pool sampling wall time', ('table', 'time')),
    Metric('eval_sample_s', 'evaluation sampling wall time', ('time',)),
    Metric('score_s', 'scoring wall time', ('time',)),
    Metric('select_s', "the selection's wall time (of this D_g)", ('time',)),
    # provenance: what was measured, in what space, how D_g was built
    Metric('paradigm'), Metric('selection'), Metric('steps'), Metric('n_train'),
    Metric('n_pool'), Metric('units'), Metric('how_built'), Metric('sampler'),
    Metric('feature_space'), Metric('fd_space'), Metric('fd_reference'), Metric('fd_sample'),
    Metric('feature_info'),
    # what ran it (engine.runtime): the UNet's dtype and the backend change the numbers
    Metric('backend'), Metric('device_kind'), Metric('compute_dtype'),
)
BY_KEY = {m.key: m for m in REGISTRY}


def view(name: str) -> tuple:
    """The keys a view shows, in registry order."""
    return tuple(m.key for m in REGISTRY if name in m.views)

"""collapse_jax: model collapse in recursively trained diffusion models, in JAX.

The public API: the scorer and the selection rules, importable without running anything.
"""
from collapse_jax.scoring import (count_duplicates, generalization_score, knn, knn_entropy,
                                  memorization_fraction, nearest_train)
from collapse_jax.selection import greedy_select, threshold_select

__all__ = ['count_duplicates', 'generalization_score', 'greedy_select', 'knn', 'knn_entropy',
           'memorization_fraction', 'nearest_train', 'threshold_select']

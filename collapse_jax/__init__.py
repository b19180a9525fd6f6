"""collapse_jax: model collapse in recursively trained diffusion models, in JAX.

The public API: the scorer and the selection rules, importable without running anything.
Feature networks live in `collapse_jax.features`.
"""
from collapse_jax.scoring import (count_duplicates, data_copying_z, frechet_distance,
                                  generalization_score, knn, knn_entropy, memorization_fraction,
                                  nearest_train, participation_ratio, precision_recall)
from collapse_jax.selection import greedy_select, threshold_select

__all__ = ['count_duplicates', 'data_copying_z', 'frechet_distance', 'generalization_score',
           'greedy_select', 'knn', 'knn_entropy', 'memorization_fraction', 'nearest_train',
           'participation_ratio', 'precision_recall',
           'threshold_select']

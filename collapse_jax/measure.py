"""Measures of images from anywhere: the scoring entry (`python main.py --mode=score`) and the
feature-space part of every generation's record. Input arrays are checked strictly, with one
line per fault that names the argument."""
from __future__ import annotations

import json
import os

import numpy as np

from collapse_jax import data, features, files, scoring
from collapse_jax.data import PM1, need


def load_images(path: str, name: str) -> np.ndarray:
    """A .npy of images -> uint8 [n, h, w, c]: uint8 as is, floats in [0, 1] scaled by 255."""
    if not path:
        raise ValueError(f'--{name} is required: a .npy of images')
    if not files.exists(path):
        raise FileNotFoundError(f'--{name}={path!r}: no such file')
    x = files.load_npy(path, f'--{name} takes a .npy array of images')
    return data.check_images(x, f'--{name}')


def fd_measures(f_gen, f_ref, pr_k: int = 3) -> dict:
    """Frechet distance and k-NN precision/recall of generated features against reference ones."""
    out = dict(fd=scoring.frechet_distance(f_gen, f_ref), fd_n=int(len(f_gen)))
    out['precision'], out['recall'] = scoring.precision_recall(f_ref, f_gen, pr_k)
    return out


def space_measures(f_train, f_gen, k: int = 1) -> dict:
    """The training set's entropy and the generated set's GS (L2 and MSE) in a feature space."""
    _, nn_d = scoring.nearest_train(f_gen, f_train)
    return dict(train_entropy_feat=scoring.knn_entropy(f_train, k),
                gs_l2_feat=float(np.mean(nn_d)),
                gs_mse_feat=float(np.mean(nn_d ** 2)) / f_train.shape[1])


def pixel_measures(train, gen, k: int = 1, mem_ratio: float = 1 / 3, copy_threshold=None,
                   return_nearest=False):
    """Pixel measures of a generated set against its training set. Entropy (nats, pixels 0-255)
    of both sets in the paper's form (copies kept, log(eps + 1e-10)) and de-duplicated, with the
    duplicate count; GS ([-1, 1] pixels) and gs_ratio (GS over the training set's own mean
    leave-one-out nearest distance, scale-free); the memorized share by the ratio test and, if
    `copy_threshold` (0-255 L2) is given, by d1 < copy_threshold, with the share of training
    images that have another training image that close (an exact duplicate counts: the
    training set's own clusters); effective dimension and mean
    intensity (0-255) of both sets. With return_nearest, also each generated image's nearest
    training index (for the nearest-neighbour grid)."""
    t, g = features.pixel(train), features.pixel(gen)
    out = {}
    for name, x in (('train', t), ('pool', g)):
        eps, dup = scoring.nn_distances(x, k), scoring.count_duplicates(x)
        out.update({f'{name}_duplicates': dup,
                    f'{name}_entropy': scoring.entropy_from_distances(eps, x.shape[1], k,
                                                                      scoring.PAPER_FLOOR),
                    # without copies the de-duplicated set is the set: same distances
                    f'{name}_entropy_dedup': scoring.entropy_from_distances(eps, x.shape[1], k)
                    if dup == 0 else scoring.knn_entropy(x, k, dedup=True)})
        if name == 'train':  # each training image's distance to its nearest other one
            nn1 = eps if k == 1 else scoring.nn_distances(t)
    nn_idx, d = scoring.nearest_two(g, t)
    spacing = float(np.mean(nn1))
    out.update(gs_l2=float(np.mean(d[:, 0])) / PM1,
               gs_mse=float(np.mean(d[:, 0] ** 2)) / t.shape[1] / PM1 ** 2,
               gs_ratio=float(np.mean(d[:, 0])) / spacing if spacing > 0 else None,
               memorization=scoring.memorized_share(d, mem_ratio),
               participation_ratio=scoring.participation_ratio(g),
               train_participation_ratio=scoring.participation_ratio(t),
               mean_intensity=float(np.mean(g)), train_mean_intensity=float(np.mean(t)))
    if copy_threshold is not None:
        out.update(memorization_calibrated=float(np.mean(d[:, 0] < copy_threshold)),
                   train_near_copy_share=float(np.mean(nn1 < copy_threshold)),
                   copy_threshold=float(copy_threshold))
    return (out, nn_idx[:, 0]) if return_nearest else out


def copy_threshold(real_train, real_heldout, mem_ratio: float = 1 / 3) -> float:
    """The calibrated copy distance (0-255 L2): mem_ratio x the median distance from held-out
    real images to their nearest real training image. Unlike the ratio test it does not need a
    second neighbour, so it keeps firing when the training set holds clusters of near-copies."""
    return mem_ratio * float(np.median(scoring.nearest_train(features.pixel(real_heldout),
                                                             features.pixel(real_train))[1]))


def score_files(generated, train, reference='', feature_space='pixel', weights='', out='',
                k=1, pr_k=3):
    """The scoring entry: reads and checks the arrays, measures, prints and writes JSON."""
    gen, tr = load_images(generated, 'generated'), load_images(train, 'train')
    ref = load_images(reference, 'reference') if reference else tr
    for name, x in (('train', tr), ('reference', ref)):
        if x.shape[1:] != gen.shape[1:]:
            raise ValueError(f'image shapes differ: --generated {gen.shape[1:]} vs --{name} '
                             f'{x.shape[1:]}')
    for name, x in (('generated', gen), ('train', tr), ('reference', ref)):
        if len(scoring.unique_rows(x)) <= max(k, pr_k):
            raise ValueError(f'--{name}: {len(x)} images; need more than {max(k, pr_k)} distinct')
    f = features.get(feature_space, {feature_space: weights} if weights else None)
    rec = dict(generated=files.absolute(generated), train=files.absolute(train),
               reference=files.absolute(reference) if reference else 'train (no --reference)',
               n_generated=len(gen), n_train=len(tr), n_reference=len(ref),
               feature_space=f.name, fd_space=f.name,
               units=f'entropy: nats, pixels in [0, 255]; gs: pixels in [-1, 1]; *_feat, fd, '
                     f'precision, recall: {f.name} features', feature_info=f.info)
    rec.update(pixel_measures(tr, gen, k))
    if reference:  # held-out images of the training set's distribution: relative copying
        rec.update(scoring.relative_copying(gen, tr, ref),
                   copy_heldout=f'--reference, n={len(ref)}')
    f_gen = f(gen)
    rec.update(fd_measures(f_gen, f(ref), pr_k), **space_measures(f(tr), f_gen, k))
    out = out or os.path.splitext(generated)[0] + '.scores.json'
    files.save_json(out, rec)
    print(json.dumps(rec, indent=1))
    return rec


def check_config(cfg) -> None:
    """The score section's own checks."""
    sc = cfg.score
    need(sc.k >= 1, f'score.k={sc.k}; must be >= 1')
    need(sc.pr_k >= 1, f'score.pr_k={sc.pr_k}; must be >= 1')
    need(0 < sc.mem_ratio <= 1, f'score.mem_ratio={sc.mem_ratio}; allowed: 0 < x <= 1')
    need(sc.grid >= 1, f'score.grid={sc.grid}; must be >= 1')
    need(sc.nn_pairs >= 1, f'score.nn_pairs={sc.nn_pairs}; must be >= 1')
    need(sc.eval_n >= 0, f'score.eval_n={sc.eval_n}; must be >= 0 (0 = no evaluation sample)')
    need(sc.fd_n >= 0, f'score.fd_n={sc.fd_n}; must be >= 0 (0 = all of the evaluation sample)')

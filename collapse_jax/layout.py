"""The run directory: every path, label and generation directory, in one home.

  <workdir>/
    config.json       the resolved config (a rerun with another config is refused)
    metrics.jsonl     one record per generation, rewritten atomically (never duplicated)
    curves.png, entropy_gs.png, report.html
    gen_XXX/          train_images.npy (+ train_labels/source/index.npy, selection.json): D_g
                      ckpt/ (orbax: preemption checkpoint, then the generation's final model)
                      times.json, pool.npy (+ pool_labels.npy): S_g as uint8, what is scored
                      eval.npy: E_g, the evaluation sample (FD, recognizable, copy_z's mirror)
                      heldout.npy: H_g, the held-out set behind the copy measures and the
                      absolute measures' nulls (uint8; held-out real at generation 0)
                      features_<space>.npy: S_g in the selection's feature space (not pixel),
                      made once, read by later selections (a cache: deleted, it is remade)
                      samples.png, nearest.png, projection.png
  A sweep puts each variant in <workdir>/<paradigm>_<selection>/ (SweepDir); a study puts each
  (N, seed) sweep in <workdir>/N<N>_seed<seed>/ and its figures in <workdir>/figures/ (StudyDir);
  a calibration puts each N's model in <workdir>/N<N>/, its cells in N<N>/cells/ and its figures
  in <workdir>/figures/ (CalibrateDir); the entropy intervention puts each (K, seed) cell in
  <workdir>/K<K>_seed<s>/ and its figures in <workdir>/figures/ (EntropyDir).

Each phase's output is written atomically and the file that marks the phase done goes last
(train_images.npy for D_g, pool.npy for training + sampling), so a killed run resumes from the
last finished phase.
"""
from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import numpy as np

from collapse_jax import files

GEN_PREFIX = 'gen_'


class Variant(NamedTuple):
    """One paradigm and selection rule: how a variant is named in records, legends and tables
    (`label`, 'replace/greedy') and on disk (`dirname`, 'replace_greedy')."""
    paradigm: str
    rule: str

    @property
    def label(self) -> str:
        return f'{self.paradigm}/{self.rule}'

    @property
    def dirname(self) -> str:
        return f'{self.paradigm}_{self.rule}'

    @classmethod
    def of(cls, cfg) -> 'Variant':
        return cls(cfg.loop.paradigm, cfg.loop.selection)


def parse_variants(text: str, field: str = 'sweep') -> list:
    """'replace:none, accumulate:greedy' -> [Variant('replace', 'none'), ...]."""
    out = []
    for item in str(text).split(','):
        if item.count(':') != 1:
            raise ValueError(f'{field}={text!r}: item {item!r} is not paradigm:selection')
        out.append(Variant(*(x.strip() for x in item.split(':'))))
    return out


@dataclasses.dataclass
class TrainSet:
    """D_g: images, labels (or None), source ids (-1 real, -2 fresh real, i = S_i), row index of
    each image in its source, and how it was built (the selection's record)."""
    images: np.ndarray
    labels: np.ndarray | None
    source: np.ndarray
    index: np.ndarray
    info: dict


class GenDir:
    """One generation's directory."""

    def __init__(self, root, g):
        self.g, self.path = g, os.path.join(root, f'{GEN_PREFIX}{g:03d}')

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def ckpt(self):
        return files.absolute(self.file('ckpt'))

    def has_train_set(self):
        return files.exists(self.file('train_images.npy'))

    def has_pool(self):
        return files.exists(self.file('pool.npy'))

    def save_train_set(self, ts: TrainSet):
        """The images file goes last and marks the set complete."""
        if ts.labels is not None:
            files.save_npy(self.file('train_labels.npy'), ts.labels)
        files.save_npy(self.file('train_source.npy'), ts.source)
        files.save_npy(self.file('train_index.npy'), ts.index)
        files.save_json(self.file('selection.json'), ts.info)
        files.save_npy(self.file('train_images.npy'), ts.images)

    def _load(self, name, fix):
        return files.load_npy(self.file(name), fix)

    def load_train_set(self) -> TrainSet:
        fix = (f'delete {self.path} and rerun: the previous generation\'s selection makes it '
               'again' if self.g else f'delete {self.path} and rerun: D_0 is made again')

        def opt(name):
            return self._load(name, fix) if files.exists(self.file(name)) else None
        return TrainSet(self._load('train_images.npy', fix), opt('train_labels.npy'),
                        self._load('train_source.npy', fix), self._load('train_index.npy', fix),
                        files.read_json(self.file('selection.json')))

    def save_pool(self, pool, labels, times, eval_sample=None):
        """times.json, the labels and the evaluation sample, then pool.npy, which marks the
        phase done."""
        files.save_json(self.file('times.json'), times)
        if labels is not None:
            files.save_npy(self.file('pool_labels.npy'), labels)
        if eval_sample is not None:
            files.save_npy(self.file('eval.npy'), eval_sample)
        files.save_npy(self.file('pool.npy'), pool)

    # pool.npy marks training and sampling done: without it they run again, and training
    # resumes from its final checkpoint, so only the sampling is redone
    def _pool_fix(self):
        return (f'delete {self.file("pool.npy")} and rerun: generation {self.g} is sampled again '
                'from its final checkpoint')

    def load_eval(self):
        p = self.file('eval.npy')
        return self._load('eval.npy', self._pool_fix()) if files.exists(p) else None

    def load_pool(self):
        lab = self.file('pool_labels.npy')
        return (self._load('pool.npy', self._pool_fix()),
                self._load('pool_labels.npy', self._pool_fix()) if files.exists(lab) else None)

    def times(self) -> dict:
        p = self.file('times.json')
        return files.read_json(p) if files.exists(p) else {}


class RunDir:
    """One run's directory (one variant)."""

    def __init__(self, root):
        self.root = os.fspath(root)

    def file(self, name):
        return os.path.join(self.root, name)

    config = property(lambda self: self.file('config.json'))
    metrics = property(lambda self: self.file('metrics.jsonl'))
    curves = property(lambda self: self.file('curves.png'))
    entropy_gs = property(lambda self: self.file('entropy_gs.png'))
    report = property(lambda self: self.file('report.html'))
    train_log = property(lambda self: self.file('train_log.jsonl'))
    loss = property(lambda self: self.file('loss.png'))
    tensorboard = property(lambda self: self.file('tb'))

    def gen(self, g) -> GenDir:
        return GenDir(self.root, g)

    def generations(self) -> list:
        """Indices of the generation directories present, ascending."""
        if not files.isdir(self.root):
            return []
        return sorted(int(d[len(GEN_PREFIX):]) for d in files.listdir(self.root)
                      if d.startswith(GEN_PREFIX) and d[len(GEN_PREFIX):].isdigit())

    def records(self) -> list:
        return files.read_jsonl(self.metrics)

    def copy_generation_zero_from(self, src: 'RunDir'):
        """Generation 0 (real data, its model and pool) is the same in every variant of a sweep:
        copy the finished pool instead of training it again. pool.npy is written last."""
        s, d = src.gen(0), self.gen(0)
        if not s.has_pool() or d.has_pool():
            return
        names = [n for n in files.listdir(s.path)
                 if n.startswith(('train_', 'pool', 'eval', 'selection.json', 'times.json'))]
        for name in sorted(names, key=lambda n: n == 'pool.npy'):
            files.copy(s.file(name), d.file(name))


class SweepDir:
    """A sweep: one RunDir per variant, and the comparison of them all."""

    def __init__(self, root):
        self.root = os.fspath(root)

    def run(self, v: Variant) -> RunDir:
        return RunDir(os.path.join(self.root, v.dirname))

    compare_png = property(lambda self: os.path.join(self.root, 'compare.png'))
    compare_html = property(lambda self: os.path.join(self.root, 'compare.html'))
    entropy_gs = property(lambda self: os.path.join(self.root, 'entropy_gs.png'))


class StudyDir:
    """A study: one SweepDir per (N, seed), and the figures."""

    def __init__(self, root):
        self.root = os.fspath(root)

    def sweep(self, n: int, seed: int) -> SweepDir:
        return SweepDir(os.path.join(self.root, f'N{n}_seed{seed}'))

    def run(self, n: int, seed: int, v: Variant) -> RunDir:
        return self.sweep(n, seed).run(v)

    figures = property(lambda self: os.path.join(self.root, 'figures'))

    def figure(self, name: str) -> str:
        return os.path.join(self.figures, name)


class CalibrateDir:
    """A calibration: one generation-0 run per N (its checkpoints), a cell per step count."""

    def __init__(self, root):
        self.root = os.fspath(root)

    def run(self, n: int) -> RunDir:
        return RunDir(os.path.join(self.root, f'N{n}'))

    def cell(self, n: int, steps: int, suffix: str = '.json') -> str:
        return os.path.join(self.root, f'N{n}', 'cells', f'steps{steps}{suffix}')

    figures = property(lambda self: os.path.join(self.root, 'figures'))

    def figure(self, name: str) -> str:
        return os.path.join(self.figures, name)


class EntropyDir:
    """The entropy intervention: one generation-0 run per (K, seed) cell (its checkpoint and
    pictures), the cell's record beside it, and the figures."""

    def __init__(self, root):
        self.root = os.fspath(root)

    def run(self, parents: int, seed: int) -> RunDir:
        return RunDir(os.path.join(self.root, f'K{parents}_seed{seed}'))

    def cell(self, parents: int, seed: int) -> str:
        return os.path.join(self.root, f'K{parents}_seed{seed}', 'cell.json')

    figures = property(lambda self: os.path.join(self.root, 'figures'))

    def figure(self, name: str) -> str:
        return os.path.join(self.figures, name)

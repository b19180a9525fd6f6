"""The phase diagram of generation 0: where a model generalizes and where it copies, over the
dataset size N and the training length, before any multi-generation run.

  python main.py --mode=calibrate --config=configs/calibrate_cpu.py --workdir=runs/calibrate

For each N of `calibrate.ns`, one generation-0 model trains on N real images for the largest
of `calibrate.steps`; at each of those step counts (a checkpoint of that run, so the learning
rate is not yet annealed there) it draws `score.eval_n` samples and measures them against
D_0: memorization (ratio test and calibrated), copy_z against held-out real images, FD beside
its floor, and the recognizable share; it draws their grids. Each cell is written as it is
measured (<workdir>/N<N>/cells/steps<S>.json), so a rerun resumes. Then it draws
<workdir>/figures/phase.png and writes results.json, naming the headline regime: the smallest
N and step count where generation 0 generalizes while a 4x smaller N copies.
"""
from __future__ import annotations

import json
import logging

import numpy as np

from collapse_jax import files, judge, layout, loop, measure, metrics, plan, report
from collapse_jax import engine as engine_lib
from collapse_jax import train as train_lib
from collapse_jax.data import need

log = logging.getLogger('collapse_jax')

KEYS = metrics.view('calibrate')


def run_calibration(cfg, workdir, engine=None):
    """Measures every (N, steps) cell not yet measured, then draws. Returns the results."""
    p = plan.calibrate_plan(cfg)
    subs = []
    for n in p.ns:
        sub = cfg.copy_and_resolve_references()
        sub.data.n, sub.loop.generations, sub.sweep = n, 1, ''
        sub.train.steps = max(p.steps)
        plan.validate(sub)
        subs.append(sub)
    engine = engine or engine_lib.Engine(subs[0])
    with loop.Preemption() as pre:  # SIGTERM: a checkpoint, then Stopped; a rerun resumes
        for sub in subs:
            _calibrate_n(sub, layout.CalibrateDir(workdir), p.steps, engine, pre)
            loop.stop_at_boundary(pre, f'after N={sub.data.n}')
    return draw(cfg, workdir)


def _calibrate_n(cfg, cd, steps, engine, pre):
    """One model of generation 0 at N = cfg.data.n; a cell at each step count."""
    n = cfg.data.n
    todo = [s for s in steps if not files.exists(cd.cell(n, s))]
    if not todo:
        return
    real, rd = loop.real_split(cfg), cd.run(n)
    jd, (images, labels) = judge.Judge(cfg, real), real.d0()
    files.makedirs(rd.root)
    loop.check_workdir_config(rd.config, cfg.to_json(sort_keys=True))

    def measure_at(s):
        def hook(state):
            params = state['ema'] if cfg.train.ema else state['params']
            sample = engine.sample(cfg, params, cfg.score.eval_n, 0, 'eval')[0]
            px, nn_idx = measure.pixel_measures(images, sample, cfg.score.k,
                                                cfg.score.mem_ratio, jd.copy_threshold(),
                                                return_nearest=True)
            rec = dict(n=n, steps=s, n_samples=len(sample), **px,
                       **judge.copying(sample, images, *jd.heldout(0, None), jd.copy_threshold()),
                       **jd.fidelity(sample))
            rec.pop('feature_info', None)
            k = min(cfg.score.nn_pairs, len(sample))
            report.sample_grid(cd.cell(n, s, '_samples.png'), sample[:cfg.score.grid])
            report.nn_grid(cd.cell(n, s, '_nearest.png'), sample[:k], images[nn_idx[:k]])
            files.save_json(cd.cell(n, s), rec)
            log.info('calibrate N=%d steps=%d: %s', n, s,
                     json.dumps({k: rec.get(k) for k in KEYS}))
        return hook

    res = engine.train(cfg, images, labels, 0, rd.gen(0).ckpt, train_lib.init_params(cfg),
                       engine_lib.Events(lambda: pre.flag, hooks={s: measure_at(s) for s in todo}))
    if res.stopped:
        raise loop.Stopped(f'stopped by SIGTERM at N={n}; rerun to resume')


def collect(cfg, workdir):
    p, cd = plan.calibrate_plan(cfg), layout.CalibrateDir(workdir)
    return [files.read_json(cd.cell(n, s)) for n in p.ns for s in p.steps
            if files.exists(cd.cell(n, s))]


def headline(cells, c):
    """The smallest (N, steps) where generation 0 generalizes (|copy_z| <= generalize_z,
    memorization <= generalize_mem, recognizable at least half the real digits' share) while N/4
    at the same steps copies (copy_z <= c.copy_z or memorization >= 0.5); None if no cell does."""
    by = {(r['n'], r['steps']): r for r in cells}

    def generalizes(r):
        rec_ok = r.get('recognizable') is None or r['recognizable'] >= 0.5 * r['recognizable_real']
        return abs(r['copy_z']) <= c.generalize_z and r['memorization'] <= c.generalize_mem and \
            rec_ok

    def copies(r):
        return r['copy_z'] <= c.copy_z or r['memorization'] >= 0.5

    for (n, s), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        small = by.get((n // 4, s))
        if small and n % 4 == 0 and generalizes(r) and copies(small):
            return dict(n=n, steps=s, copying_n=n // 4, cell=r, copying_cell=small)
    return None


def draw(cfg, workdir):
    import matplotlib.pyplot as plt
    cells = collect(cfg, workdir)
    need(cells, f'{workdir}: no measured calibration cells to draw')
    p, cd = plan.calibrate_plan(cfg), layout.CalibrateDir(workdir)
    ns, steps = p.ns, p.steps
    panels = [('copy_z', 'copy_z (<< 0 copying, ~0 generalizing)', 'RdBu', -20, 20),
              ('copy_auc', 'copy AUC (< 0.5 copying, 0.5 generalizing)', 'RdBu', 0, 1),
              ('memorization', 'memorized share (d1/d2 < mem_ratio)', 'Reds', 0, 1),
              ('memorization_calibrated', 'memorized share (calibrated d1)', 'Reds', 0, 1),
              ('recognizable', 'recognizable share (p >= 0.9)', 'Greens', 0, 1)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    by = {(r['n'], r['steps']): r for r in cells}
    for ax, (key, title, cmap, lo, hi) in zip(axes, panels):
        grid = np.array([[by.get((n, s), {}).get(key, np.nan) for s in steps] for n in ns],
                        np.float64)
        ax.imshow(grid, cmap=cmap, vmin=lo, vmax=hi, aspect='auto')
        for i in range(len(ns)):
            for j in range(len(steps)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f'{grid[i, j]:.2f}' if hi == 1 else f'{grid[i, j]:.1f}',
                            ha='center', va='center', fontsize=7)
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=7)
        ax.set_yticks(range(len(ns)), [str(n) for n in ns], fontsize=7)
        ax.set_xlabel('training steps', fontsize=7)
        ax.set_ylabel('N', fontsize=7)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    report.save_fig(cd.figure('phase.png'), fig)
    head = headline(cells, cfg.calibrate)
    results = dict(cells=cells, headline=head, criteria=cfg.calibrate.to_dict())
    files.save_json(cd.figure('results.json'), results)
    print(json.dumps(dict(figures=cd.figures, headline=None if head is None else
                          {k: head[k] for k in ('n', 'steps', 'copying_n')})))
    return results

"""The study: the paper's findings at one scale, from raw data to figures, in one command.

  python main.py --mode=study --config=configs/study_cpu.py --workdir=runs/study

It runs every (N, seed) of `cfg.study` as a sweep of `cfg.study.variants` under
<workdir>/N<N>_seed<s>/<paradigm>_<selection> (each resumable like any run, all sharing one
compiled engine), then draws the figures and writes results.json + results.csv under
<workdir>/figures. Rerunning the command skips finished work and redraws.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil

import numpy as np

from collapse_jax import files, loop, report

log = logging.getLogger('collapse_jax')

KEYS = ('train_entropy', 'gs_mse', 'gs_l2', 'fd', 'precision', 'recall', 'real_share',
        'memorization', 'train_entropy_feat', 'gs_mse_feat')


def _ints(text):
    return [int(v) for v in str(text).split(',')]


def runs_of(cfg):
    """[(n, seed)]: every N with the first seed, and every seed at the headline N."""
    ns, seeds = _ints(cfg.study.ns), _ints(cfg.study.seeds)
    out = [(n, seeds[0]) for n in ns]
    out += [(cfg.study.headline_n, s) for s in seeds[1:]]
    return out


def run_study(cfg, workdir, engine=None):
    """Runs (or resumes) every run of the study, then draws it. Returns the results dict."""
    if cfg.study.headline_n not in _ints(cfg.study.ns):
        raise ValueError(f'study.headline_n={cfg.study.headline_n} must be one of '
                         f'study.ns={cfg.study.ns!r}')
    subs = []
    for n, seed in runs_of(cfg):
        sub = cfg.copy_and_resolve_references()
        sub.data.n, sub.seed, sub.sweep = n, seed, cfg.study.variants
        subs.append((n, seed, sub, os.path.join(workdir, f'N{n}_seed{seed}')))
    # every variant of every run validated before any work
    checked = [loop.sweep_configs(sub, d) for _, _, sub, d in subs]
    engine = engine or loop.Engine(checked[0][0][1])
    for n, seed, sub, d in subs:
        log.info('study: N=%d seed=%d -> %s', n, seed, d)
        loop.run(sub, d, engine=engine)
    return draw(cfg, workdir)


def cost(cfg):
    """The study's work: {'train_images': images through the train step, 'unet_evals': UNet
    evaluations in the sampler} over every (N, seed) run, variant and generation. Generation 0
    is trained and sampled once per run (a sweep shares it); accumulate:none trains on the
    growing union. Divide by measured rates (python -m collapse_jax.bench) for a time."""
    from collapse_jax import train
    lp, variants = cfg.loop, cfg.study.variants.split(',')
    evals_per_image = cfg.sample.steps * (2 if cfg.model.num_classes and cfg.sample.guidance != 1
                                          else 1)
    images = evals = 0
    for n, _ in runs_of(cfg):
        for g in range(lp.generations):
            for item in (variants[:1] if g == 0 else variants):
                grow = item.replace(' ', '') == 'accumulate:none'
                size = n * (1 + g * lp.pool_factor) if grow else n
                images += train.total_steps(cfg, size) * cfg.train.batch_size
                evals += n * lp.pool_factor * evals_per_image
    return dict(train_images=images, unet_evals=evals)


def collect(cfg, workdir):
    """{(n, seed, 'paradigm/selection'): [records]} of the finished runs."""
    out = {}
    for n, seed in runs_of(cfg):
        for item in cfg.study.variants.split(','):
            p, s = item.split(':')
            path = os.path.join(workdir, f'N{n}_seed{seed}', f'{p}_{s}', 'metrics.jsonl')
            if os.path.exists(path):
                out[(n, seed, f'{p}/{s}')] = files.read_jsonl(path)
    return out


def _series(recs, key):
    return np.array([[r['generation'], r[key]] for r in recs if r.get(key) is not None],
                    np.float64).reshape(-1, 2)


def _spread(runs, n, variant, key):
    """generation -> (mean, min, max) over the seeds run at N = n."""
    by_gen = {}
    for (rn, _, v), recs in runs.items():
        if rn == n and v == variant:
            for g, val in _series(recs, key):
                by_gen.setdefault(int(g), []).append(val)
    gens = sorted(by_gen)
    vals = [np.array(by_gen[g]) for g in gens]
    return (np.array(gens), np.array([v.mean() for v in vals]),
            np.array([v.min() for v in vals]), np.array([v.max() for v in vals]))


def table(runs, hn, groups, space):
    """Markdown: the last generation of each variant at N = hn (mean over seeds, [min, max]),
    and GS and entropy under replace for every N, first seed."""
    def cell(v, key):
        g, mean, lo, hi = _spread(runs, hn, v, key)
        if not len(g):
            return '', 'n/a'
        fmt = '{:.4f}' if key in ('gs_mse', 'real_share', 'memorization') else '{:.1f}'
        txt = fmt.format(mean[-1]) + (f' [{fmt.format(lo[-1])}, {fmt.format(hi[-1])}]'
                                      if lo[-1] != hi[-1] else '')
        return int(g[-1]), txt
    seeds = sorted({s for n, s, _ in runs if n == hn})
    out = [f'Last generation at N = {hn}, mean over seeds {seeds} [min, max]; GS is the MSE in '
           f'pixels in [-1, 1], FD in the {space} space, entropy in nats (pixels 0-255).', '',
           '| paradigm / selection | generation | GS (MSE) | FD | train entropy | real share '
           '| memorization |', '|---|---|---|---|---|---|---|']
    for v in [v for vs in groups.values() for v in vs]:
        cells = [cell(v, k) for k in ('gs_mse', 'fd', 'train_entropy', 'real_share',
                                      'memorization')]
        out.append(f'| {v} | {cells[0][0]} | ' + ' | '.join(c[1] for c in cells) + ' |')
    out += ['', 'replace / none, first seed, every N: generation 0 -> last', '',
            '| N | GS (MSE) | train entropy | FD |', '|---|---|---|---|']
    for (n, s, v), recs in sorted(runs.items()):
        if v == 'replace/none' and s == min(x[1] for x in runs if x[0] == n):
            a, b = recs[0], recs[-1]
            out.append(f"| {n} | {a['gs_mse']:.4f} -> {b['gs_mse']:.4f} | "
                       f"{a['train_entropy']:.1f} -> {b['train_entropy']:.1f} | "
                       f"{a['fd']:.1f} -> {b['fd']:.1f} |")
    return '\n'.join(out) + '\n'


def _legend(ax):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def draw(cfg, workdir):
    import matplotlib.pyplot as plt
    runs = collect(cfg, workdir)
    if not runs:
        raise FileNotFoundError(f'{workdir}: no finished study runs to draw')
    out_dir = os.path.join(workdir, 'figures')
    os.makedirs(out_dir, exist_ok=True)
    ns = sorted({k[0] for k in runs})
    seed0 = _ints(cfg.study.seeds)[0]
    base = 'replace/none'
    figs = {}

    # 1-2: GS and training-set entropy over generations under replace, one line per N
    for key, title, name in [('gs_mse', 'GS (MSE, pixels in [-1, 1]) under replace', 'gs_by_n'),
                             ('train_entropy', 'training-set entropy (nats, pixels 0-255) under '
                              'replace', 'entropy_by_n')]:
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        for n in ns:
            s = _series(runs.get((n, seed0, base), []), key)
            if len(s):
                ax.plot(s[:, 0], s[:, 1], marker='o', label=f'N = {n}')
        ax.set_xlabel('generation')
        ax.set_title(title, fontsize=8)
        _legend(ax)
        ax.grid(alpha=0.3)
        figs[name] = fig

    # 3: entropy against log GS across every generation and N (replace, all seeds)
    def points(keep):  # generation 0 is shared by a run's variants: counted once, from base
        return np.array([(r['train_entropy'], np.log(r['gs_mse'])) for (n, s, v), recs in
                         runs.items() if keep(v) for r in recs if r.get('gs_mse', 0) > 0
                         and (r['generation'] > 0 or v == base)]).reshape(-1, 2)

    def r_of(p):
        return float(np.corrcoef(p[:, 0], p[:, 1])[0, 1]) if len(p) > 2 else float('nan')
    pts, pts_all = points(lambda v: v == base), points(lambda v: True)
    pearson = r_of(pts)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for n in ns:
        p = np.array([(r['train_entropy'], np.log(r['gs_mse'])) for (rn, s, v), recs in
                      runs.items() if v == base and rn == n for r in recs]).reshape(-1, 2)
        ax.scatter(p[:, 0], p[:, 1], s=14, label=f'N = {n}')
    ax.set_title(f'entropy vs log GS under replace: Pearson r = {pearson:.3f} (paper: 0.91)',
                 fontsize=8)
    ax.set_xlabel('training-set entropy (nats)')
    ax.set_ylabel('log GS (MSE)')
    _legend(ax)
    ax.grid(alpha=0.3)
    figs['entropy_vs_log_gs'] = fig

    # 4: GS and FD over generations, vanilla vs greedy vs threshold, replace and accumulate,
    # at the headline N with the spread over seeds
    hn = cfg.study.headline_n
    groups = {'replace': ['replace/none', 'replace/greedy', 'replace/threshold'],
              'accumulate': ['accumulate_subsample/none', 'accumulate/greedy',
                             'accumulate/threshold']}
    space = next((r.get('fd_space') for recs in runs.values() for r in recs), 'pixel')
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.4))
    for col, (paradigm, variants) in enumerate(groups.items()):
        for row, key in enumerate(('gs_mse', 'fd')):
            ax = axes[row, col]
            for v in variants:
                g, mean, lo, hi = _spread(runs, hn, v, key)
                if len(g):
                    ax.plot(g, mean, marker='o', label=v)
                    ax.fill_between(g, lo, hi, alpha=0.2)
            what = 'GS (MSE, pixels)' if key == 'gs_mse' else f'FD ({space})'
            ax.set_title(f'{paradigm}: {what}, N = {hn}, band = seeds min-max', fontsize=8)
            ax.set_xlabel('generation')
            ax.grid(alpha=0.3)
            _legend(ax)
    fig.tight_layout()
    figs['selection_gs_fd'] = fig

    # 5: share of real images kept, accumulate + greedy against random subsampling
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for v in ('accumulate/greedy', 'accumulate/threshold', 'accumulate_subsample/none'):
        g, mean, lo, hi = _spread(runs, hn, v, 'real_share')
        if len(g):
            ax.plot(g, mean, marker='o', label=v)
    ax.set_title(f'share of real images in the training set, N = {hn}', fontsize=8)
    ax.set_xlabel('generation')
    _legend(ax)
    ax.grid(alpha=0.3)
    figs['real_share'] = fig

    for name, fig in figs.items():
        report._save_fig(os.path.join(out_dir, f'{name}.png'), fig)
    # 6: nearest-neighbour grids, first and last generation (replace, headline N, first seed)
    d = os.path.join(workdir, f'N{hn}_seed{seed0}', 'replace_none')
    gens = sorted(x for x in os.listdir(d) if x.startswith('gen_')) if os.path.isdir(d) else []
    for label, g in (('first', gens[:1]), ('last', gens[-1:])):
        src = os.path.join(d, g[0], 'nearest.png') if g else ''
        if src and os.path.exists(src):
            shutil.copyfile(src, os.path.join(out_dir, f'nearest_{label}.png'))

    files.atomic_write(os.path.join(out_dir, 'table.md'),
                       lambda f: f.write(table(runs, hn, groups, space).encode()))
    rows = [dict(n=n, seed=s, variant=v, generation=r['generation'],
                 **{k: r.get(k) for k in KEYS}) for (n, s, v), recs in sorted(runs.items())
            for r in recs]
    results = dict(pearson_entropy_log_gs=pearson, pearson_points=int(len(pts)),
                   pearson_all_variants=r_of(pts_all), pearson_all_points=int(len(pts_all)),
                   paper_pearson=0.91, headline_n=hn, rows=rows)
    files.save_json(os.path.join(out_dir, 'results.json'), results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    files.atomic_write(os.path.join(out_dir, 'results.csv'), lambda f: f.write(buf.getvalue().encode()))
    log.info('study figures in %s; Pearson r (entropy, log GS) = %.3f over %d points', out_dir,
             pearson, len(pts))
    print(json.dumps(dict(figures=out_dir, pearson_entropy_log_gs=pearson)))
    return results

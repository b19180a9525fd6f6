"""The study: the paper's findings at one scale, from raw data to figures, in one command.

  python main.py --mode=study --config=configs/study_cpu.py --workdir=runs/study

It runs every (N, seed) of `cfg.study` as a sweep of `cfg.study.variants` (each resumable like any
run, all sharing one compiled engine, each seed with its own initial weights), then draws the
figures and writes table.md, results.json and results.csv under <workdir>/figures (layout.py has
the directory names). Rerunning the command skips finished work and redraws.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil

import numpy as np

from collapse_jax import files, layout, loop, report, scoring, selection
from collapse_jax.data import need

log = logging.getLogger('collapse_jax')

KEYS = ('train_entropy', 'train_entropy_dedup', 'gs_mse', 'gs_l2', 'gs_ratio', 'memorization',
        'memorization_calibrated', 'copy_z', 'participation_ratio', 'train_participation_ratio',
        'mean_intensity', 'train_mean_intensity', 'fd', 'fd_floor', 'fd_n', 'recognizable',
        'recognizable_real', 'precision', 'recall', 'real_share', 'train_entropy_feat',
        'gs_mse_feat', 'gs_digits', 'copy_auc', 'copy_share_q05', 'copy_share_q01',
        'copy_heldout_n', 'copy_heldout_median')


def _ints(text, field='study.ns'):
    """A comma-separated list of ints, or one line that names the field."""
    try:
        return [int(v) for v in str(text).split(',')]
    except ValueError:
        raise ValueError(f'{field}={text!r}; allowed: comma-separated integers') from None


def sweep_of(cfg, seed) -> str:
    """The variants run at `seed`: study.variants at the first seed; study.seed_variants (if
    set, a subset that keeps the budget) at the others."""
    first = _ints(cfg.study.seeds, 'study.seeds')[0]
    extra = cfg.study.get('seed_variants', '')
    return cfg.study.variants if seed == first or not extra else extra


def runs_of(cfg):
    """[(n, seed)]: every N with the first seed, and every seed at the headline N."""
    ns, seeds = _ints(cfg.study.ns), _ints(cfg.study.seeds, 'study.seeds')
    out = [(n, seeds[0]) for n in ns]
    out += [(cfg.study.headline_n, s) for s in seeds[1:]]
    return out


def plan(cfg, workdir):
    """[(n, seed, config, run directory)] in the order they run. With study.seed_variants the
    variants every seed runs go first, at every seed, so that a study cut short already holds the
    seed spread; then each run's remaining variants (its finished ones resume at once)."""
    need(cfg.study.headline_n in _ints(cfg.study.ns),
         f'study.headline_n={cfg.study.headline_n} must be one of study.ns={cfg.study.ns!r}')
    shared = cfg.study.get('seed_variants', '')
    every = layout.parse_variants(cfg.study.variants, 'study.variants')
    if shared:
        some = layout.parse_variants(shared, 'study.seed_variants')
        need(set(some) <= set(every) and some[0] == every[0],
             f'study.seed_variants={shared!r} must be a subset of study.variants that starts '
             f'with its first variant ({":".join(every[0])}, which trains generation 0)')
    out = []
    for n, seed in runs_of(cfg):
        for sweep in dict.fromkeys([shared, sweep_of(cfg, seed)] if shared else
                                   [sweep_of(cfg, seed)]):
            sub = cfg.copy_and_resolve_references()
            sub.data.n, sub.seed, sub.sweep = n, seed, sweep
            out.append((n, seed, sub, os.path.join(workdir, layout.study_run_dirname(n, seed))))
    return sorted(out, key=lambda s: s[2].sweep != shared)  # stable: the shared passes first


def run_study(cfg, workdir, engine=None):
    """Runs (or resumes) every run of the study, then draws it. Returns the results dict."""
    subs = plan(cfg, workdir)
    # every variant of every run validated before any work
    checked = [loop.sweep_configs(sub, d) for _, _, sub, d in subs]
    engine = engine or loop.Engine(checked[0][0][1])
    # the generations each pass adds (for the ETA): generation 0 once per run, then G - 1 for
    # each variant an earlier pass of the same run has not run
    adds, seen = [], set()
    for _, _, sub, d in subs:
        new = [v for v in layout.parse_variants(sub.sweep) if (d, v) not in seen]
        adds.append(len(new) * (cfg.loop.generations - 1) + (d not in seen))
        seen |= {(d, v) for v in new} | {d}
    for i, (n, seed, sub, d) in enumerate(subs):
        log.info('study: N=%d seed=%d %s -> %s', n, seed, sub.sweep, d)
        loop.run(sub, d, engine=engine, later=sum(adds[i + 1:]))
    return draw(cfg, workdir)


def cost(cfg):
    """The study's work: {'train_images': images through the train step, 'unet_evals': UNet
    evaluations in the sampler} over every (N, seed) run, variant and generation. Generation 0
    is trained and sampled once per run (a sweep shares it); a variant that keeps every
    candidate of accumulate (accumulate:none) trains on the growing union. Divide by measured
    rates (python -m collapse_jax.bench) for a time."""
    from collapse_jax import train
    lp = cfg.loop
    evals_per_image = cfg.sample.steps * (2 if cfg.model.num_classes and cfg.sample.guidance != 1
                                          else 1)
    images = evals = 0
    for n, seed in runs_of(cfg):
        variants = layout.parse_variants(sweep_of(cfg, seed), 'study.variants')
        for g in range(lp.generations):
            for paradigm, rule in (variants[:1] if g == 0 else variants):
                grow = paradigm == 'accumulate' and selection.keeps_all(paradigm, rule)
                size = n * (1 + g * lp.pool_factor) if grow else n
                images += train.total_steps(cfg, size) * cfg.train.batch_size
                evals += (n * lp.pool_factor + cfg.score.eval_n) * evals_per_image
    return dict(train_images=images, unet_evals=evals)


def variants_of(cfg):
    """The study's variant labels, in config order."""
    return [layout.variant_label(p, s)
            for p, s in layout.parse_variants(cfg.study.variants, 'study.variants')]


def collect(cfg, workdir):
    """{(n, seed, 'paradigm/selection'): [records]} of the finished runs."""
    out = {}
    for n, seed in runs_of(cfg):
        for p, s in layout.parse_variants(sweep_of(cfg, seed), 'study.variants'):
            rd = layout.RunDir(os.path.join(workdir, layout.study_run_dirname(n, seed),
                                            layout.variant_dirname(p, s)))
            if os.path.exists(rd.metrics):
                out[(n, seed, layout.variant_label(p, s))] = rd.records()
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


def groups_of(variants):
    """{'replace': [...], 'accumulate': [...]}: the variants that start from S_g alone (replace,
    fresh) and those that keep earlier data (accumulate, accumulate_subsample), vanilla first."""
    out = {}
    for v in variants:
        family = 'accumulate' if v.startswith('accumulate') else 'replace'
        out.setdefault(family, []).append(v)
    return {k: sorted(vs, key=lambda v: not v.endswith('/none')) for k, vs in out.items()}


def baseline_of(variants):
    """The vanilla variant the single-line figures follow: replace/none if the study runs it."""
    return 'replace/none' if 'replace/none' in variants else variants[0]


def table(runs, hn, groups, space, base='replace/none'):
    """Markdown: the last generation of each variant at N = hn (mean over seeds, [min, max]),
    and GS and entropy of the baseline for every N, first seed."""
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
    out += ['', f'{base}, first seed, every N: generation 0 -> last', '',
            '| N | GS (MSE) | train entropy | FD |', '|---|---|---|---|']
    for (n, s, v), recs in sorted(runs.items()):
        if v == base and s == min(x[1] for x in runs if x[0] == n):
            a, b = recs[0], recs[-1]
            out.append(f"| {n} | {a['gs_mse']:.4f} -> {b['gs_mse']:.4f} | "
                       f"{a['train_entropy']:.1f} -> {b['train_entropy']:.1f} | "
                       f"{a['fd']:.1f} -> {b['fd']:.1f} |")
    return '\n'.join(out) + '\n'


def _finish(ax, title, fontsize=8):
    ax.set_title(title, fontsize=fontsize)
    report.generation_axis(ax, fontsize)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _by_n_figures(plt, runs, ns, seed0, base):
    """GS and training-set entropy over generations for the baseline, one line per N."""
    figs = {}
    for key, title, name in [('gs_mse', 'GS (MSE, pixels in [-1, 1])', 'gs_by_n'),
                             ('train_entropy', 'training-set entropy (nats, pixels 0-255)',
                              'entropy_by_n')]:
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        for n in ns:
            s = _series(runs.get((n, seed0, base), []), key)
            if len(s):
                ax.plot(s[:, 0], s[:, 1], marker='o', label=f'N = {n}')
        _finish(ax, f'{title}, {base}')
        figs[name] = fig
    return figs


def _log_of(key):
    return lambda r: np.log(r[key]) if r.get(key) else None


def _entropy_points(runs, keep, base, y=None):
    """(entropy, y(record)) of every record of the variants `keep` accepts, y = log GS unless
    given (records where y is None are left out); generation 0 is shared by a run's variants, so
    it is counted once, from the baseline."""
    y = y or _log_of('gs_mse')
    pts = [(r['train_entropy'], y(r)) for (n, s, v), recs in runs.items() if keep(v)
           for r in recs if r['generation'] > 0 or v == base]
    return np.array([p for p in pts if p[1] is not None], np.float64).reshape(-1, 2)


def _pearson_figure(plt, runs, ns, base, r):
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for n in ns:
        p = np.array([(x['train_entropy'], np.log(x['gs_mse'])) for (rn, s, v), recs in
                      runs.items() if v == base and rn == n for x in recs]).reshape(-1, 2)
        ax.scatter(p[:, 0], p[:, 1], s=14, label=f'N = {n}')
    ax.set_title(f'entropy vs log GS, {base}: Pearson r = {r:.3f} (paper: 0.91)', fontsize=8)
    ax.set_xlabel('training-set entropy (nats)')
    ax.set_ylabel('log GS (MSE)')
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


WHAT = {'gs_mse': 'GS (MSE, pixels)', 'copy_z': 'copy_z (<< 0: copying; size-dependent)',
        'memorization_calibrated': 'absolute: memorized share (calibrated)',
        'copy_auc': 'relative: copy AUC (0.5 null)',
        'copy_share_q05': 'relative: share < held-out 5% quantile (null 0.05)'}


def _selection_figure(plt, runs, hn, groups, space, keys=('gs_mse', 'fd')):
    """`keys` over generations, each family's variants at the headline N, seed band."""
    fig, axes = plt.subplots(len(keys), len(groups), figsize=(4.5 * len(groups), 3.2 * len(keys)),
                             squeeze=False)
    for col, (family, variants) in enumerate(groups.items()):
        for row, key in enumerate(keys):
            ax = axes[row, col]
            for v in variants:
                g, mean, lo, hi = _spread(runs, hn, v, key)
                if len(g):
                    ax.plot(g, mean, marker='o', label=v)
                    ax.fill_between(g, lo, hi, alpha=0.2)
            what = WHAT.get(key, f'FD ({space})')
            _finish(ax, f'{family}: {what}, N = {hn}, band = seeds min-max')
    fig.tight_layout()
    return fig


def _real_share_figure(plt, runs, hn, variants):
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for v in variants:
        if v.startswith('accumulate'):
            g, mean, _, _ = _spread(runs, hn, v, 'real_share')
            if len(g):
                ax.plot(g, mean, marker='o', label=v)
    _finish(ax, f'share of real images in the training set, N = {hn}')
    return fig


def _copy_nearest_grids(workdir, out_dir, hn, seed0, base):
    """The baseline's nearest-neighbour grids, first and last generation (headline N)."""
    p, s = base.split('/')
    rd = layout.RunDir(os.path.join(workdir, layout.study_run_dirname(hn, seed0),
                                    layout.variant_dirname(p, s)))
    gens = rd.generations()
    for label, g in (('first', gens[:1]), ('last', gens[-1:])):
        src = rd.gen(g[0]).file('nearest.png') if g else ''
        if src and os.path.exists(src):
            shutil.copyfile(src, os.path.join(out_dir, f'nearest_{label}.png'))


def _add_digits_gs(workdir, runs):
    """Each record's GS in the digits classifier's space (mean L2 from S_g to its nearest D_g
    image there), from the run's files: a GS that does not share the pixel entropy's geometry.
    1-channel (digits) studies only."""
    from collapse_jax import features
    f = features.get('digits')
    for (n, seed, v), recs in runs.items():
        rd = layout.RunDir(os.path.join(workdir, layout.study_run_dirname(n, seed),
                                        layout.variant_dirname(*v.split('/'))))
        for r in recs:
            gd = rd.gen(r['generation'])
            if 'gs_digits' not in r and os.path.exists(gd.file('pool.npy')):
                r['gs_digits'] = scoring.generalization_score(
                    f(gd.load_pool()[0]), f(gd.load_train_set().images), 'l2')


def _cross_space_r(runs, base):
    """Pearson r of the pixel-space entropy against log GS in the digits space and against
    copy_z, over the baseline's records."""
    def r_of(y):
        return report.pearson(_entropy_points(runs, lambda v: v == base, base, y))
    return dict(pearson_entropy_log_gs_digits=r_of(_log_of('gs_digits')),
                pearson_entropy_copy_z=r_of(lambda r: r.get('copy_z')))


def _write_results(out_dir, runs, results):
    rows = [dict(n=n, seed=s, variant=v, generation=r['generation'],
                 **{k: r.get(k) for k in KEYS}) for (n, s, v), recs in sorted(runs.items())
            for r in recs]
    files.save_json(os.path.join(out_dir, 'results.json'), dict(results, rows=rows))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    files.atomic_write(os.path.join(out_dir, 'results.csv'),
                       lambda f: f.write(buf.getvalue().encode()))
    return dict(results, rows=rows)


def draw(cfg, workdir):
    import matplotlib.pyplot as plt
    runs = collect(cfg, workdir)
    if not runs:
        raise FileNotFoundError(f'{workdir}: no finished study runs to draw')
    out_dir = os.path.join(workdir, 'figures')
    os.makedirs(out_dir, exist_ok=True)
    ns, hn = sorted({k[0] for k in runs}), cfg.study.headline_n
    seed0 = _ints(cfg.study.seeds, 'study.seeds')[0]
    variants = variants_of(cfg)
    base, groups = baseline_of(variants), groups_of(variants)
    space = next((r.get('fd_space') for recs in runs.values() for r in recs), 'pixel')
    if cfg.data.channels == 1:
        _add_digits_gs(workdir, runs)
    pts = _entropy_points(runs, lambda v: v == base, base)
    pts_all = _entropy_points(runs, lambda v: True, base)
    r = report.pearson(pts)
    figs = _by_n_figures(plt, runs, ns, seed0, base)
    figs['entropy_vs_log_gs'] = _pearson_figure(plt, runs, ns, base, r)
    figs['selection_gs_fd'] = _selection_figure(plt, runs, hn, groups, space)
    if any(r.get('copy_z') is not None for recs in runs.values() for r in recs):
        figs['copying'] = _selection_figure(plt, runs, hn, groups, space,
                                            ('memorization_calibrated', 'copy_auc',
                                             'copy_share_q05', 'copy_z'))
    if any(v.startswith('accumulate') for v in variants):
        figs['real_share'] = _real_share_figure(plt, runs, hn, variants)
    for name, fig in figs.items():
        report._save_fig(os.path.join(out_dir, f'{name}.png'), fig)
    _copy_nearest_grids(workdir, out_dir, hn, seed0, base)
    files.atomic_write(os.path.join(out_dir, 'table.md'),
                       lambda f: f.write(table(runs, hn, groups, space, base).encode()))
    results = _write_results(out_dir, runs, dict(
        pearson_entropy_log_gs=r, pearson_points=int(len(pts)),
        pearson_all_variants=report.pearson(pts_all), pearson_all_points=int(len(pts_all)),
        paper_pearson=0.91, headline_n=hn, baseline=base, **_cross_space_r(runs, base)))
    log.info('study figures in %s; Pearson r (entropy, log GS) = %.3f over %d points', out_dir,
             r, len(pts))
    print(json.dumps(dict(figures=out_dir, pearson_entropy_log_gs=r)))
    return results

"""The study's figures, table.md, results.json and results.csv, drawn from its finished runs
(collect); `draw` is rerun by every `--mode=study` and may be called alone."""
from __future__ import annotations

import csv
import io
import json
import logging

import numpy as np

from collapse_jax import files, layout, metrics, paradigms, report, tables
from collapse_jax.plan import StudyPlan, study_plan

log = logging.getLogger('collapse_jax')

KEYS = metrics.view('study')


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
        out.setdefault(family_of(v), []).append(v)
    return {k: sorted(vs, key=lambda v: not v.endswith('/none')) for k, vs in out.items()}


def family_of(label: str) -> str:
    """'accumulate/greedy' -> its paradigm's family ('replace' or 'accumulate')."""
    return paradigms.get(label.split('/')[0]).family


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


def _pearson_figure(plt, runs, base, r, trend):
    """Entropy against log GS for every variant: colour = generation, marker = seed; the
    baseline's r, its r against the generation index, and the r across variants at each
    generation (`trend`: _trend_r)."""
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    gens = sorted({x['generation'] for recs in runs.values() for x in recs})
    seeds = sorted({s for _, s, _ in runs})
    cmap = plt.get_cmap('viridis', max(len(gens), 2))
    for (n, s, v), recs in runs.items():
        for x in recs:
            if x['generation'] == 0 and v != base:
                continue  # generation 0 is shared by a run's variants
            ax.scatter(x['train_entropy'], np.log(x['gs_mse']), s=18,
                       color=cmap(gens.index(x['generation'])), marker='os^D'[seeds.index(s) % 4],
                       edgecolors='k' if v == base else 'none', linewidths=0.5)
    for g in gens:
        ax.scatter([], [], color=cmap(gens.index(g)), s=18, label=f'generation {g}')
    for i, s in enumerate(seeds):
        ax.scatter([], [], color='grey', marker='os^D'[i % 4], s=18, label=f'seed {s}')
    within = ', '.join(f'{g}: {v:.2f} ({trend["pearson_within_generation_points"][g]} pts)'
                       for g, v in trend['pearson_within_generation'].items()) or 'none'
    ax.set_title(f'entropy vs log GS; {base} (black edge): r = {r:.3f} (paper: 0.91)\n'
                 f"r(entropy, generation index) = {trend['pearson_entropy_generation']:.3f}; "
                 f'r across variants at generation {within}', fontsize=7)
    ax.set_xlabel('training-set entropy (nats, pixels 0-255)', fontsize=8)
    ax.set_ylabel('log GS (MSE, pixels in [-1, 1])', fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def _trend_r(runs, base, hn):
    """What the entropy/log-GS r can and cannot tell: the baseline's entropy against the
    generation index, FD and the samples' mean intensity (anything that trends with generations
    matches log GS as well), and the r across variants and seeds at each generation >= 1, at the
    headline N."""
    def base_r(y):
        return report.pearson(np.array([(x['train_entropy'], y(x)) for (n, s, v), recs in
                                        runs.items() if v == base and n == hn for x in recs
                                        if y(x) is not None], np.float64).reshape(-1, 2))
    within, count = {}, {}
    for g in sorted({x['generation'] for recs in runs.values() for x in recs} - {0}):
        p = np.array([(x['train_entropy'], np.log(x['gs_mse'])) for (n, _, _), recs in
                      runs.items() if n == hn for x in recs if x['generation'] == g])
        if len(p) > 2:
            within[g], count[g] = report.pearson(p), len(p)
    return dict(pearson_entropy_generation=base_r(lambda x: x['generation']),
                pearson_entropy_fd=base_r(lambda x: x.get('fd')),
                pearson_entropy_mean_intensity=base_r(lambda x: x.get('mean_intensity')),
                pearson_within_generation=within, pearson_within_generation_points=count)


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
            floor = metrics.BY_KEY[key].floor  # FD's: two real sets of the same size
            g, mean, _, _ = _spread(runs, hn, variants[0], floor) if floor else ((),) * 4
            if len(g):
                ax.plot(g, mean, ls='--', color='grey', label=f'{floor} (dashed)')
            what = metrics.BY_KEY[key].short or f'FD ({space})'
            _finish(ax, f'{family}: {what}, N = {hn}, band = seeds min-max')
    fig.tight_layout()
    return fig


def _real_share_figure(plt, runs, hn, variants):
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for v in variants:
        if family_of(v) == 'accumulate':
            g, mean, _, _ = _spread(runs, hn, v, 'real_share')
            if len(g):
                ax.plot(g, mean, marker='o', label=v)
    _finish(ax, f'share of real images in the training set, N = {hn}')
    return fig


COPYING = (('memorization_calibrated', 'memorization_calibrated_null',
            'absolute: share within the calibrated distance', 'share of samples'),
           ('copy_auc', 0.5, 'relative: copy AUC against fresh draws', 'AUC (< 0.5: closer)'),
           ('copy_share_q05', 0.05, 'relative: share < held-out 5% quantile', 'share of samples'),
           ('copy_share_q01', 0.01, 'relative: share < held-out 1% quantile', 'share of samples'))


def _copying_figure(plt, runs, hn, variants):
    """Absolute against relative copying, each beside its null (dashed): H_g's calibrated share
    in the variant's colour; 0.5 and q for the relative measures, whose axes include them.
    Lines: mean over the seeds that ran the variant, band: their min-max."""
    fig, axes = plt.subplots(1, len(COPYING), figsize=(4.2 * len(COPYING), 3.4), squeeze=False)
    for ax, (key, null, title, ylabel) in zip(axes[0], COPYING):
        for i, v in enumerate(variants):
            g, mean, lo, hi = _spread(runs, hn, v, key)
            if not len(g):
                continue
            seeds = sorted({s for (n, s, x), recs in runs.items() if n == hn and x == v
                            and any(r['generation'] > 0 for r in recs)})  # past the shared 0
            ax.plot(g, mean, marker='o', color=f'C{i}', label=v + (
                f' (seed {seeds[0]} only)' if len(seeds) == 1 else f' ({len(seeds)} seeds)'))
            ax.fill_between(g, lo, hi, color=f'C{i}', alpha=0.2)
            if isinstance(null, str):
                gn, mn, _, _ = _spread(runs, hn, v, null)
                if len(gn):
                    ax.plot(gn, mn, ls='--', lw=1, color=f'C{i}')
        if not isinstance(null, str):
            ax.axhline(null, ls='--', lw=1, color='k')
            lo, hi = ax.get_ylim()
            ax.set_ylim(min(lo, null - 0.02), max(hi, null + 0.02))
        ax.set_ylabel(ylabel, fontsize=8)
        _finish(ax, f'{title}\ndashed: null (H_g, fresh draws of D_g\'s process)', 7)
    labelled = next((ax for ax in axes.flat if ax.get_legend_handles_labels()[0]), None)
    if labelled is not None:  # the first panel with data (a panel can have none)
        labelled.legend(fontsize=6, title=f'N = {hn}; band: min-max over seeds',
                        title_fontsize=6)
    fig.tight_layout()
    return fig


def _copy_nearest_grids(sd, hn, seed0, base, variants):
    """Nearest-neighbour grids at the headline N, first seed: the baseline's first and last
    generation (nearest_first.png, nearest_last.png) and every variant's last
    (nearest_last_<paradigm>_<selection>.png)."""
    def copy(v, g, name):
        src = sd.run(hn, seed0, v).gen(g).file('nearest.png')
        if files.exists(src):
            files.copy(src, sd.figure(name))
    for v in variants:
        gens = sd.run(hn, seed0, v).generations()
        if gens:
            copy(v, gens[-1], f'nearest_last_{v.dirname}.png')
            if v == base:
                copy(v, gens[0], 'nearest_first.png')
                copy(v, gens[-1], 'nearest_last.png')


def _cross_space_r(runs, base):
    """Pearson r of the pixel-space entropy against log GS in the digits space and against
    copy_z, over the baseline's records."""
    def r_of(y):
        return report.pearson(_entropy_points(runs, lambda v: v == base, base, y))
    return dict(pearson_entropy_log_gs_digits=r_of(_log_of('gs_digits')),
                pearson_entropy_copy_z=r_of(lambda r: r.get('copy_z')))


def _write_results(sd, runs, results):
    rows = [dict(n=n, seed=s, variant=v, generation=r['generation'],
                 **{k: r.get(k) for k in KEYS}) for (n, s, v), recs in sorted(runs.items())
            for r in recs]
    files.save_json(sd.figure('results.json'), dict(results, rows=rows))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    files.atomic_write(sd.figure('results.csv'),
                       lambda f: f.write(buf.getvalue().encode()))
    return dict(results, rows=rows)


def draw(cfg, workdir):
    import matplotlib.pyplot as plt
    p, sd = study_plan(cfg), layout.StudyDir(workdir)
    runs = collect(p, workdir)
    if not runs:
        raise FileNotFoundError(f'{workdir}: no finished study runs to draw')
    files.makedirs(sd.figures)
    ns, hn, seed0, variants = sorted({k[0] for k in runs}), p.headline_n, p.seeds[0], p.labels()
    base, groups = baseline_of(variants), groups_of(variants)
    space = next((r.get('fd_space') for recs in runs.values() for r in recs), 'pixel')
    pts = _entropy_points(runs, lambda v: v == base, base)
    pts_all = _entropy_points(runs, lambda v: True, base)
    r, trend = report.pearson(pts), _trend_r(runs, base, hn)
    figs = _by_n_figures(plt, runs, ns, seed0, base) if len(ns) > 1 else {}
    figs['entropy_vs_log_gs'] = _pearson_figure(plt, runs, base, r, trend)
    figs['selection_gs_fd'] = _selection_figure(plt, runs, hn, groups, space)
    if any(r.get('copy_auc') is not None for recs in runs.values() for r in recs):
        figs['copying'] = _copying_figure(plt, runs, hn, variants)
    if any(family_of(v) == 'accumulate' for v in variants):
        figs['real_share'] = _real_share_figure(plt, runs, hn, variants)
    for name, fig in figs.items():
        report.save_fig(sd.figure(f'{name}.png'), fig)
    by_label = {v.label: v for v in p.variants}
    _copy_nearest_grids(sd, hn, seed0, by_label[base], p.variants)
    results = dict(
        pearson_entropy_log_gs=r, pearson_points=int(len(pts)),
        pearson_all_variants=report.pearson(pts_all), pearson_all_points=int(len(pts_all)),
        paper_pearson=0.91, headline_n=hn, baseline=base, **trend,
        **_cross_space_r(runs, base))
    results = _write_results(sd, runs, results)
    files.atomic_write(sd.figure('table.md'), lambda f: f.write(
        (table(runs, hn, groups, space, base) + '\n' + tables.study_tables(results)).encode()))
    log.info('study figures in %s; Pearson r (entropy, log GS) = %.3f over %d points',
             sd.figures, r, len(pts))
    print(json.dumps(dict(figures=sd.figures, pearson_entropy_log_gs=r)))
    return results


def collect(p: StudyPlan, workdir):
    """{(n, seed, 'paradigm/selection'): [records]} of the finished runs."""
    out, sd = {}, layout.StudyDir(workdir)
    for n, seed in p.runs():
        for v in p.variants_at(seed):
            rd = sd.run(n, seed, v)
            if files.exists(rd.metrics):
                out[(n, seed, v.label)] = rd.records()
    return out

"""Pictures and pages: sample grids, generated-beside-nearest-training grids, PCA projections,
curves over generations, entropy against log GS, and the self-contained HTML reports."""
from __future__ import annotations

import base64
import html
import io
import json
import os

import numpy as np
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from collapse_jax import data, files, layout, metrics  # noqa: E402

# (metrics key, panel title); {fd_space} / {feature_space}: the spaces the runs measured in
CURVES = [(k, metrics.BY_KEY[k].title) for k in metrics.view('curves')]
# drawn dashed in the panel of the first key
FLOORS = {m.key: m.floor for m in metrics.REGISTRY if m.floor}


def _tile(images, rows, cols, pad=1):
    n, h, w, c = images.shape
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(min(n, rows * cols)):
        r, q = divmod(i, cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h,
               pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
    return canvas


def save_image(path, canvas, min_side=192, max_side=2048):
    img = Image.fromarray(canvas.squeeze(-1) if canvas.shape[-1] == 1 else canvas)
    scale = max(1, min(min_side // min(img.size), max_side // max(img.size)))
    img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST)
    files.atomic_write(path, lambda f: img.save(f, format='PNG'))


def sample_grid(path, images):
    cols = int(np.ceil(np.sqrt(len(images))))
    save_image(path, _tile(images, int(np.ceil(len(images) / cols)), cols))


def nn_grid(path, generated, nearest):
    """Top row: generated images; bottom row: each one's nearest training image."""
    pairs = np.concatenate([generated, nearest])
    save_image(path, _tile(pairs, 2, len(generated)))


def save_fig(path, fig):
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=90, bbox_inches='tight')
    plt.close(fig)
    files.atomic_write(path, lambda f: f.write(buf.getvalue()))


def _space(runs, key='feature_space'):
    spaces = sorted({r.get(key, 'pixel') for recs in runs.values() for r in recs})
    return '/'.join(spaces) or 'pixel'


def generation_axis(ax, fontsize=7):
    """x is the generation: integer ticks only."""
    ax.set_xlabel('generation', fontsize=fontsize)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(path, runs):
    """runs: {label: [metric records]} -> one panel per measure, one line per run, shared axes.
    The *_feat panels are left out when every run selected in pixels (they would repeat the
    pixel panels)."""
    curves = [c for c in CURVES if not (c[0].endswith('_feat') and _space(runs) == 'pixel')]
    cols = 5
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[len(curves):]:
        ax.set_visible(False)
    for ax, (key, title) in zip(axes.ravel(), curves):
        for i, (label, recs) in enumerate(runs.items()):
            pts = [(r['generation'], r[key]) for r in recs if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker='o', ms=3, label=label, color=f'C{i}')
            ref = [(r['generation'], r[FLOORS[key]]) for r in recs
                   if key in FLOORS and r.get(FLOORS[key]) is not None]
            if ref:
                ax.plot(*zip(*ref), ls='--', lw=0.8, color=f'C{i}')
        ax.set_title(title.format(fd_space=_space(runs, 'fd_space'),
                                  feature_space=_space(runs)), fontsize=7)
        generation_axis(ax)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=6)
    fig.tight_layout()
    save_fig(path, fig)


def plot_loss(path, rows):
    """train_log.jsonl rows -> the training loss against step, one line per generation."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    gens = sorted({r['generation'] for r in rows})
    for g in gens:
        pts = sorted((r['step'], r['loss']) for r in rows if r['generation'] == g)
        ax.plot(*zip(*pts), lw=1, color=plt.cm.viridis(g / max(len(gens) - 1, 1)),
                label=f'generation {g}')
    ax.set_yscale('log')
    ax.set_xlabel('step', fontsize=7)
    ax.set_title('training loss (logged steps)', fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    save_fig(path, fig)


def pca_axes(real):
    """Mean and top-2 principal directions of the real images (pixels in [-1, 1])."""
    x = data.to_pm1(real.reshape(len(real), -1)).astype(np.float64)
    mu = x.mean(0)
    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
    return mu, vt[:2]


def projection(path, real, samples, title):
    """Samples (and the real images, grey) on the real data's top-2 principal directions."""
    mu, axes = pca_axes(real)
    proj = lambda im: (data.to_pm1(im.reshape(len(im), -1)) - mu) @ axes.T  # noqa: E731
    pr, ps = proj(real), proj(samples)
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.scatter(pr[:, 0], pr[:, 1], s=6, c='0.75', label='real (held out)')
    ax.scatter(ps[:, 0], ps[:, 1], s=6, c='C3', label='generated')
    lim = 1.3 * np.abs(pr).max()
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel('PC 1', fontsize=7)
    ax.set_ylabel('PC 2', fontsize=7)
    ax.set_title(title, fontsize=7)
    ax.legend(fontsize=6)
    save_fig(path, fig)


def entropy_vs_gs(records, feat=False):
    """(entropy, log GS (MSE), Pearson r) across the records (generations, runs)."""
    ek, gk = ('train_entropy_feat', 'gs_mse_feat') if feat else ('train_entropy', 'gs_mse')
    pts = np.array([(r[ek], np.log(r[gk])) for r in records
                    if r.get(ek) is not None and r.get(gk, 0) > 0], np.float64).reshape(-1, 2)
    return pts, pearson(pts)


def pearson(pts) -> float:
    """Pearson r of the two columns of pts [n, 2]; nan with fewer than 3 points."""
    return float(np.corrcoef(pts[:, 0], pts[:, 1])[0, 1]) if len(pts) > 2 else float('nan')


def plot_entropy_vs_gs(path, runs):
    """Training-set entropy against log GS, pixels and score space, with Pearson r."""
    feats = (False,) if _space(runs) == 'pixel' else (False, True)
    fig, axes = plt.subplots(1, len(feats), figsize=(4 * len(feats), 3.4), squeeze=False)
    axes = axes[0]
    allrecs = [r for recs in runs.values() for r in recs]
    out = {}
    for ax, feat in zip(axes, feats):
        for label, recs in runs.items():
            pts, _ = entropy_vs_gs(recs, feat)
            if len(pts):
                ax.scatter(pts[:, 0], pts[:, 1], s=14, label=label)
        _, r = entropy_vs_gs(allrecs, feat)
        out['feat' if feat else 'pixel'] = r
        space = _space(runs) if feat else 'pixels'
        ax.set_title(f'entropy vs log GS ({space}): Pearson r = {r:.3f}', fontsize=8)
        ax.set_xlabel('training-set entropy (nats)', fontsize=7)
        ax.set_ylabel('log GS (MSE)', fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    save_fig(path, fig)
    out.setdefault('feat', out['pixel'])  # selection in pixels: the feature space is pixels
    return out


# ----------------------------------------------------------------------------- HTML reports

TABLE = list(metrics.view('table'))


def _img(path, alt):
    """An <img> with the PNG inlined (the page must read offline, moved or mailed)."""
    if not files.exists(path):
        return ''
    data = base64.b64encode(files.read_bytes(path)).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v):
    if isinstance(v, float):
        return f'{v:.4g}'
    return html.escape(str(v)) if v is not None else ''


def _table(rows, cols):
    head = ''.join(f'<th>{html.escape(c)}</th>' for c in cols)
    body = ''.join('<tr>' + ''.join(f'<td>{_fmt(r.get(c))}</td>' for c in cols) + '</tr>'
                   for r in rows)
    return f'<table><tr>{head}</tr>{body}</table>'


_PAGE = '''<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font:14px sans-serif;margin:24px;max-width:1400px}} img{{max-width:100%;margin:4px}}
table{{border-collapse:collapse;font-size:12px}} td,th{{border:1px solid #ccc;padding:2px 6px}}
pre{{background:#f6f6f6;padding:8px;font-size:11px;max-height:300px;overflow:auto}}
.gen{{display:flex;flex-wrap:wrap;align-items:flex-start}}</style></head>
<body data-images-loaded="0"><h1>{title}</h1>{body}
<script>
// lets a headless browser check that every inlined image decoded
window.addEventListener('load', function () {{
  var ok = Array.from(document.images).filter(function (i) {{ return i.naturalWidth > 0; }});
  document.body.dataset.imagesLoaded = ok.length + '/' + document.images.length;
}});
</script></body></html>'''


def _write_page(path, title, body):
    page = _PAGE.format(title=html.escape(title), body=body).encode()
    files.atomic_write(path, lambda f: f.write(page))


def write_report(run_dir, records, cfg):
    """<run_dir>/report.html: config, metrics table, curves, entropy vs log GS (Pearson r), and
    per generation the sample grid, nearest-neighbour grid and PCA projection, all inlined.
    run_dir: a layout.RunDir; cfg: the run's config as a dict."""
    label = layout.Variant(cfg['loop']['paradigm'], cfg['loop']['selection']).label
    rs = plot_entropy_vs_gs(run_dir.entropy_gs, {label: records})
    last = records[-1] if records else {}
    space, fd_space = last.get('feature_space', 'pixel'), last.get('fd_space', 'pixel')
    body = [f'<p>{len(records)} generation(s) of {html.escape(label)}, N = {cfg["data"]["n"]} '
            f'({html.escape(cfg["data"]["source"])}). Entropy is in nats with pixels in [0, 255]; '
            f'GS and variance use pixels in [-1, 1]; the *_feat columns are in the '
            f'<b>{html.escape(space)}</b> feature space (the selection\'s); FD, precision and '
            f'recall in the <b>{html.escape(fd_space)}</b> space, against '
            f'{html.escape(str(last.get("fd_reference", "")))}.</p>',
            '<h2>Metrics</h2>', _table(records, TABLE),
            '<h2>Curves</h2>', _img(run_dir.curves, 'curves'),
            f'<h2>Entropy against log GS</h2><p>Pearson r: pixels {rs["pixel"]:.3f}, '
            f'{html.escape(space)} {rs["feat"]:.3f} (the paper: 0.91, DINOv2 features, across '
            'generations and dataset sizes).</p>',
            _img(run_dir.entropy_gs, 'entropy vs log GS')]
    train_log = files.read_jsonl(run_dir.train_log)
    if train_log:
        plot_loss(run_dir.loss, train_log)
        body += ['<h2>Training loss</h2>', _img(run_dir.loss, 'training loss')]
    for r in records:
        g, gd = r['generation'], run_dir.gen(r['generation'])
        body += [f'<h2>Generation {g}</h2><p>samples; generated (top) beside nearest training '
                 'image (bottom); PCA projection</p><div class="gen">',
                 _img(gd.file('samples.png'), f'samples {g}'),
                 _img(gd.file('nearest.png'), f'nearest {g}'),
                 _img(gd.file('projection.png'), f'projection {g}'), '</div>']
    body += ['<h2>Config</h2><pre>', html.escape(json.dumps(cfg, indent=1)), '</pre>']
    _write_page(run_dir.report, f'collapse_jax report: {label}', ''.join(body))
    return run_dir.report


def write_compare(out, runs):
    """runs: {label: workdir} -> compare.png (shared axes, one line per run), entropy_gs.png and
    compare.html with every run's last generation side by side, in `out` (a layout.SweepDir)."""
    recs = {}
    for label, wd in runs.items():
        rd = layout.RunDir(wd)
        if not files.exists(rd.metrics):
            raise FileNotFoundError(f'{wd}: no metrics.jsonl (not a collapse_jax run directory)')
        recs[label] = rd.records()
    plot_curves(out.compare_png, recs)
    rs = plot_entropy_vs_gs(out.entropy_gs, recs)
    last = [dict(run=label, **r[-1]) for label, r in recs.items() if r]
    body = ['<h2>Last generation of each run</h2>', _table(last, ['run'] + TABLE),
            '<h2>Curves</h2>', _img(out.compare_png, 'compare'),
            f'<h2>Entropy against log GS</h2><p>Pearson r across all runs and generations: '
            f'pixels {rs["pixel"]:.3f}, features {rs["feat"]:.3f}.</p>',
            _img(out.entropy_gs, 'entropy vs log GS'),
            '<h2>Runs</h2><ul>'] + [f'<li>{html.escape(k)}: {html.escape(files.absolute(v))}</li>'
                                    for k, v in runs.items()] + ['</ul>']
    _write_page(out.compare_html, 'collapse_jax: runs compared', ''.join(body))
    return out.compare_html


def train_logger(rd, g):
    """Generation g's progress lines -> rd's train_log.jsonl (appended; a resumed generation
    first drops its rows from the resume step on, in one atomic rewrite) and TensorBoard: one
    event run per generation (<run>/tb/gen_XXX), so that `tensorboard --logdir <workdir>`
    overlays every generation of every variant. Returns on_log(step, metrics), with .close()."""
    from tensorboardX import SummaryWriter
    state = {}

    def on_log(step, values):
        if not state:
            rows = files.read_jsonl(rd.train_log)
            keep = [r for r in rows if r['generation'] != g or r['step'] < step]
            if keep != rows or not files.exists(rd.train_log):
                files.save_jsonl(rd.train_log, keep)
            state['tb'] = SummaryWriter(os.path.join(rd.tensorboard, f'gen_{g:03d}'),
                                        flush_secs=10)
        files.append_jsonl(rd.train_log, dict(generation=g, step=step, **values))
        for k, v in values.items():
            state['tb'].add_scalar(f'train/{k}', v, step)
        state['tb'].flush()
    on_log.close = lambda: state['tb'].close() if state else None
    return on_log

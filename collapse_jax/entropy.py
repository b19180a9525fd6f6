"""Does lower-entropy training data make a model copy? An intervention at a fixed N, in one
generation, that the recursive loop cannot make (there entropy, GS, FD and the generation index
all fall together):

  python main.py --mode=entropy --config=configs/entropy_cpu.py --workdir=runs/entropy

For each K of `entropy.parents` and each seed of `entropy.seeds`, the training set D is N draws
of a law P_K and the held-out set H is `entropy.heldout_n` further draws of the same law. P_K
picks one of K parent digits (the first K images of the run's real order, never the held-out
ones) uniformly and jitters it as a digit would vary, not by pixel noise a denoiser can undo: a
shift of up to `entropy.shift` pixels each way (zero fill) and an intensity scale in
[1 - entropy.scale, 1 + entropy.scale]. K = 0 is the control: D is plain real digits (D_0) and H
held-out real ones. A generation-0 model trains on D (`train.steps`), draws `score.eval_n`
samples, and they are measured against D with H as the held-out set: relative copying (AUC,
tail shares, with intervals), the calibrated share beside its null (H's share; the distance is
the seed's, from real digits, the same for every K), GS beside its null, and FD against held-out
real digits. Each cell is written when measured (<workdir>/K<K>_seed<s>/cell.json), so a rerun
resumes; then figures/entropy.png and results.json are drawn.

If lower-entropy data make the model sit closer to D than fresh draws of the same law do, AUC
and the tail shares fall as K shrinks, and the calibrated share rises above its null. If only
the scale contracts, AUC stays near its level while the calibrated share and its null rise
together.
"""
from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np

from collapse_jax import files, judge, layout, loop, measure, plan, report, scoring, streams
from collapse_jax import engine as engine_lib
from collapse_jax import train as train_lib
from collapse_jax.data import need

log = logging.getLogger('collapse_jax')


def draw(parents: np.ndarray, n: int, rng, shift: int, scale: float) -> np.ndarray:
    """n draws of P_K: a parent picked uniformly, shifted by (dy, dx) in [-shift, shift] with
    zero fill, its intensity scaled by a factor in [1 - scale, 1 + scale], rounded to uint8."""
    pick = rng.integers(len(parents), size=n)
    dy, dx = rng.integers(-shift, shift + 1, size=(2, n))
    factor = rng.uniform(1 - scale, 1 + scale, size=n)
    h, w = parents.shape[1:3]
    padded = np.pad(parents, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    out = np.stack([padded[p, shift - y:shift - y + h, shift - x:shift - x + w]
                    for p, y, x in zip(pick, dy, dx)]).astype(np.float64)
    return np.clip(np.round(out * factor[:, None, None, None]), 0, 255).astype(np.uint8)


def sets(cfg, real, jd, k: int, p: plan.EntropyPlan):
    """(D, H, what H is) for K = k: draws of P_K, or plain real digits for k = 0."""
    if k == 0:
        return real.d0()[0], jd.heldout_real[:p.heldout_n], 'held-out real digits'
    need(k <= len(real.order), f'entropy.parents: K={k} exceeds the {len(real.order)} images')
    parents = real.images[real.order[:k]]
    rng = streams.numpy_rng(cfg.seed, 'parents', k)
    both = draw(parents, cfg.data.n + p.heldout_n, rng, p.shift, p.scale)
    return both[:cfg.data.n], both[cfg.data.n:], f'{p.heldout_n} further draws of P_{k}'


def run_entropy(cfg, workdir, engine=None):
    """Measures every (K, seed) cell not yet measured, then draws. Returns the results."""
    p, ed = plan.entropy_plan(cfg), layout.EntropyDir(workdir)
    subs = []
    for seed in p.seeds:
        sub = cfg.copy_and_resolve_references()
        sub.seed, sub.loop.generations, sub.sweep = seed, 1, ''
        plan.validate(sub)
        subs.append(sub)
    engine = engine or engine_lib.Engine(subs[0])
    plan.check_cpu_budget(cfg, engine, dict(
        train_images=len(p.parents) * len(p.seeds) * train_lib.total_steps(cfg, cfg.data.n)
        * cfg.train.batch_size, unet_evals=len(p.parents) * len(p.seeds) * cfg.score.eval_n
        * cfg.sample.steps), 'this intervention')
    with loop.Preemption() as pre:  # SIGTERM: a checkpoint, then Stopped; a rerun resumes
        for sub in subs:
            real = loop.real_split(sub)
            jd = judge.Judge(sub, real)
            for k in p.parents:
                if not files.exists(ed.cell(k, sub.seed)):
                    _cell(sub, ed, k, p, real, jd, engine, pre)
                loop.stop_at_boundary(pre, f'after cell K={k} seed={sub.seed}')
    return draw_results(cfg, workdir)


def _cell(cfg, ed, k, p, real, jd, engine, pre):
    d, h, what = sets(cfg, real, jd, k, p)
    rd = ed.run(k, cfg.seed)
    files.makedirs(rd.root)
    loop.check_workdir_config(rd.config, cfg.to_json(sort_keys=True))
    res = engine.train(cfg, d, None, 0, rd.gen(0).ckpt, train_lib.init_params(cfg),
                       engine_lib.Events(lambda: pre.flag))
    if res.stopped:
        raise loop.Stopped(f'stopped by SIGTERM in cell K={k} seed={cfg.seed}; rerun to resume')
    sample = engine.sample(cfg, res.weights(cfg.train.ema), cfg.score.eval_n, 0, 'eval')[0]
    threshold = jd.copy_threshold()
    px, nn_idx = measure.pixel_measures(d, sample, cfg.score.k, cfg.score.mem_ratio, threshold,
                                        return_nearest=True)
    rec = dict(parents=k if k else 'plain real digits', seed=cfg.seed, n=len(d),
               n_heldout=len(h), n_samples=len(sample), steps=res.steps, **px,
               **judge.copying(sample, d, h, what, threshold), **jd.fidelity(sample))
    rec.pop('feature_info', None)
    rec['heldout_entropy'] = scoring.knn_entropy(h.reshape(len(h), -1), cfg.score.k)
    files.save_npy(rd.gen(0).file('train_images.npy'), d)
    files.save_npy(rd.gen(0).file('heldout.npy'), h)
    files.save_npy(rd.gen(0).file('eval.npy'), sample)
    n = min(cfg.score.nn_pairs, len(sample))
    report.nn_grid(rd.gen(0).file('nearest.png'), sample[:n], d[nn_idx[:n]])
    files.save_json(ed.cell(k, cfg.seed), rec)
    log.info('entropy K=%s seed=%d: %s', rec['parents'], cfg.seed, json.dumps(
        {key: rec.get(key) for key in ('train_entropy', 'copy_auc', 'copy_share_q05',
                                       'memorization_calibrated', 'memorization_calibrated_null',
                                       'fd')}))


def collect(cfg, workdir):
    p, ed = plan.entropy_plan(cfg), layout.EntropyDir(workdir)
    return [files.read_json(ed.cell(k, s)) for s in p.seeds for k in p.parents
            if files.exists(ed.cell(k, s))]


def draw_results(cfg, workdir):
    """figures/entropy.png (relative copying, and the calibrated share's excess over its null,
    against the training set's entropy) and figures/results.json."""
    import matplotlib.pyplot as plt
    cells, ed = collect(cfg, workdir), layout.EntropyDir(workdir)
    need(cells, f'{workdir}: no measured cells to draw')
    files.makedirs(ed.figures)
    panels = (('copy_auc', 'relative: copy AUC (null 0.5)', 0.5),
              ('copy_share_q05', 'relative: share < held-out 5% quantile (null 0.05)', 0.05),
              ('excess', 'absolute: calibrated share minus its null (H)', 0.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6))
    seeds = sorted({c['seed'] for c in cells})
    for ax, (key, title, null) in zip(axes, panels):
        for i, s in enumerate(seeds):
            pts = sorted((c['train_entropy'], c['memorization_calibrated']
                          - c['memorization_calibrated_null'] if key == 'excess' else c[key],
                          c['parents']) for c in cells if c['seed'] == s)
            ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker='os^'[i % 3],
                    color=f'C{i}', label=f'seed {s}')
            for x, y, k in pts:
                ax.annotate('real' if isinstance(k, str) else f'K={k}', (x, y), fontsize=6,
                            textcoords='offset points', xytext=(3, 3))
        ax.axhline(null, ls='--', lw=1, color='k')
        ax.set_xlabel("training set's entropy (nats, pixels 0-255)", fontsize=8)
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    report.save_fig(ed.figure('entropy.png'), fig)
    results = dict(rows=cells, plan=dataclasses.asdict(plan.entropy_plan(cfg)))
    files.save_json(ed.figure('results.json'), results)
    print(json.dumps(dict(figures=ed.figures, cells=len(cells))))
    return results

"""What several test files share: the tiny configs, a fake run directory, crash injection."""
import os

import numpy as np

from collapse_jax import files, layout, metrics, report
from configs import default

TIMING = metrics.view('time')


def run_one(cfg, workdir, engine=None):
    """One variant's generations in workdir; its records."""
    from collapse_jax import loop
    return loop.Run(cfg, str(workdir), engine).run()


def tiny(**loop_fields):
    """The loop at its smallest: 8x8 digits, N = 16, the tiny UNet, 6 steps, a 5-step sampler."""
    cfg = default.get_config()
    cfg.data.source, cfg.data.resolution, cfg.data.channels, cfg.data.n = 'digits', 8, 1, 16
    cfg.model.preset, cfg.model.layers_per_block = 'tiny', 1
    cfg.train.update(batch_size=8, steps=6, warmup_steps=2, lr=2e-3, log_every=3, ckpt_every=3)
    cfg.sample.update(steps=5, batch_size=16)
    cfg.score.update(grid=16, nn_pairs=4, eval_n=32)
    cfg.loop.update({'generations': 2, **loop_fields})
    return cfg


def tiny_train(**train_overrides):
    """tiny()'s model with a batch of 16, for the train step's own tests."""
    cfg = tiny()
    cfg.train.update(batch_size=16, lr=2e-3, warmup_steps=10, log_every=5, ckpt_every=1000,
                     steps=0)
    cfg.train.update(train_overrides)
    return cfg


def strip(records):
    """Records without wall times (the rest is deterministic)."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def crash_once(monkeypatch, owner, name, when=lambda *a, **k: True):
    real, state = getattr(owner, name), {'done': False}

    def wrapper(*a, **k):
        if not state['done'] and when(*a, **k):
            state['done'] = True
            raise KeyboardInterrupt(f'injected crash in {name}')
        return real(*a, **k)

    monkeypatch.setattr(owner, name, wrapper)


def fake_run(workdir, paradigm, selection, seed):
    """A run directory as the loop writes it, with made-up but plausible numbers."""
    rng = np.random.default_rng(seed)
    os.makedirs(workdir, exist_ok=True)
    files.save_json(os.path.join(workdir, 'config.json'),
                    dict(loop=dict(paradigm=paradigm, selection=selection),
                         data=dict(n=16, source='digits')))
    recs = []
    real = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    for g in range(3):
        gd = layout.RunDir(workdir).gen(g).path
        os.makedirs(gd, exist_ok=True)
        pool = rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
        report.sample_grid(os.path.join(gd, 'samples.png'), pool)
        report.nn_grid(os.path.join(gd, 'nearest.png'), pool[:4], real[:4])
        report.projection(os.path.join(gd, 'projection.png'), real, pool, f'generation {g}')
        recs.append(dict(generation=g, train_entropy=300.0 - 40 * g + rng.normal(),
                         gs_mse=0.2 * np.exp(-0.5 * g) * rng.uniform(0.9, 1.1), gs_l2=5.0 - g, memorization=0.0,
                         fd=10.0 + g, precision=0.5, recall=0.4 - 0.1 * g, real_share=1.0,
                         train_entropy_feat=100.0 - 9 * g, gs_mse_feat=2.0 / (g + 1),
                         copy_z=rng.normal() - g, copy_auc=0.5 - 0.05 * g + 0.01 * rng.normal(),
                         gs_digits=6.0 - g + 0.3 * rng.normal(),
                         feature_space='pixel', fd_space='digits',
                         fd_reference='held-out real, n=32'))
    files.save_jsonl(os.path.join(workdir, 'metrics.jsonl'), recs)
    report.plot_curves(os.path.join(workdir, 'curves.png'), {f'{paradigm}/{selection}': recs})
    return recs

"""What a job will do, before it does it (`python main.py ... --dry_run`): the config checked as a
run would check it, the runs and variants, what each generation trains, samples and selects
from, and the projected time, on the running backend and, for a named TPU `--topology`, from
the FLOPs that the TPU compiler reports at a stated MFU. Nothing is written.
"""
from __future__ import annotations

import time

import jax

from collapse_jax import engine as engine_lib
from collapse_jax import paradigms, plan, train as train_lib


def missing_files(cfg) -> list:
    """The files a real run needs that are not there (weights, the TFDS data_dir), one line
    each."""
    from collapse_jax import data, features
    out = []
    for check in (data.check_config, features.check_config):
        try:
            check(cfg)
        except ValueError as e:
            out.append(str(e))
    return out


def candidates(paradigm: str, g: int, n: int, pool: int, fresh: int) -> int:
    """How many images D_{g+1} is chosen from after generation g (the selection's input)."""
    return paradigms.get(paradigm).candidate_count(g, n, pool) + fresh


def generations(cfg, n: int, variant) -> list:
    """Per generation of one variant: images trained, sampler evaluations, and candidates its
    next training set is chosen from (None after the last)."""
    lp, pool = cfg.loop, n * cfg.loop.pool_factor
    evals = cfg.sample.steps * (2 if cfg.model.num_classes and cfg.sample.guidance != 1 else 1)
    fresh = int(round(lp.fresh_fraction * n)) if paradigms.get(variant.paradigm).fresh else 0
    out = []
    for g in range(lp.generations):
        size = paradigms.get(variant.paradigm).train_size(g, n, lp.pool_factor, variant.rule)
        out.append(dict(generation=g, train_size=size,
                        images_trained=train_lib.total_steps(cfg, size) * cfg.train.batch_size,
                        sampler_evals=(pool + cfg.score.eval_n) * evals,
                        candidates=None if g == lp.generations - 1 else
                        candidates(variant.paradigm, g, n, pool, fresh)))
    return out


def _matmul_rate(dtype) -> float:
    """Measured FLOP/s of a 2048^3 matmul on every local device, in `dtype`."""
    import jax.numpy as jnp
    a = jnp.ones((2048, 2048), dtype)
    mm = jax.jit(lambda a: a @ a)
    jax.block_until_ready(mm(a))
    t0 = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(mm(a))
    return 3 * 2 * 2048 ** 3 / (time.perf_counter() - t0) * jax.local_device_count()


def describe(cfg, mode: str, topology: str = '', mfu: float = 0.3) -> dict:
    """The plan as one dict (see the module docstring)."""
    runs = plan.runs_of(cfg, mode)
    if mode in ('calibrate', 'entropy'):  # one generation-0 model per run, eval_n samples
        cfg = cfg.copy_and_resolve_references()
        cfg.loop.generations = 1
        samples = 1
        if mode == 'calibrate':  # one run per N to the largest step count, sampled at each
            steps = [int(v) for v in str(cfg.calibrate.steps).split(',')]
            cfg.train.steps, samples = max(steps), len(steps)
        work = dict(train_images=sum(train_lib.total_steps(cfg, n) * cfg.train.batch_size
                                     for n, _, _ in runs),
                    unet_evals=len(runs) * samples * cfg.score.eval_n * cfg.sample.steps)
    else:
        work = plan.work(cfg, [(n, v) for n, _, v in runs])
    flops_per_eval = plan.unet_flops(cfg, train_lib.model_graph(cfg))
    flops = flops_per_eval * (3 * work['train_images'] + work['unet_evals'])
    backend = jax.default_backend()
    dtype = engine_lib.runtime(cfg)['compute_dtype']
    rate = _matmul_rate(dtype)
    efficiency = plan.CPU_EFFICIENCY if backend == 'cpu' else mfu
    out = dict(mode=mode, missing=missing_files(cfg),
               runs=[dict(n=n, seed=s, variants=[v.label for v in vs],
                          generations=generations(cfg, n, vs[0]) if vs else [])
                     for n, s, vs in runs],
               per_variant={v.label: generations(cfg, n, v) for n, _, vs in runs[:1] for v in vs},
               **work, flops_per_eval=flops_per_eval, flops=flops,
               backend=dict(name=backend, devices=jax.device_count(),
                            device_kind=jax.devices()[0].device_kind, compute_dtype=dtype,
                            matmul_rate=rate, efficiency=efficiency,
                            hours=flops / (rate * efficiency) / 3600))
    if topology:
        from collapse_jax import aot
        devices, chip, chips = aot.topology(topology)
        per_eval = plan.unet_flops(cfg, train_lib.model_graph(cfg, 'tpu'), 'tpu')
        out['topology'] = dict(name=topology, devices=len(devices), flops_per_eval=per_eval,
                               **aot.project(cfg, per_eval, chip, chips, mfu))
    return out


def report(d: dict) -> str:
    """The plan as the lines --dry_run prints."""
    lines = [f"{d['mode']}: {len(d['runs'])} run(s)"]
    for r in d['runs']:
        lines.append(f"  N={r['n']} seed={r['seed']}: {', '.join(r['variants'])}")
    lines.append('per generation of each variant (first run; generation 0 is trained once and '
                 'shared by the variants of a run): train size, images trained, sampler '
                 'evaluations, candidates the next training set is selected from')
    for label, gens in d['per_variant'].items():
        lines.append(f'  {label}:')
        for g in gens:
            lines.append(f"    gen {g['generation']}: {g['train_size']:,} | "
                         f"{g['images_trained']:,} | {g['sampler_evals']:,} | "
                         f"{'-' if g['candidates'] is None else format(g['candidates'], ',')}")
    b = d['backend']
    lines.append(f"total: {d['train_images']:.3g} images trained, {d['unet_evals']:.3g} UNet "
                 f"evaluations, {d['flops_per_eval'] / 1e9:.3g} GFLOP per evaluation, "
                 f"{d['flops']:.3g} FLOP (training counted 3x)")
    lines.append(f"projected on this backend ({b['name']}: {b['devices']} x {b['device_kind']}, "
                 f"{b['compute_dtype']}): {b['hours']:,.2f} hours at {b['efficiency']:.0%} of the "
                 f"measured matmul rate ({b['matmul_rate'] / 1e9:,.0f} GFLOP/s)")
    if 'topology' in d:
        t = d['topology']
        lines.append(f"projected on {t['name']} ({t['devices']} devices): {t['hours']:,.2f} hours "
                     f"at {t['mfu']:.0%} MFU of the bf16 peak, {t['flops_per_eval'] / 1e9:.3g} "
                     'GFLOP per evaluation (lowered for TPU)')
    for m in d['missing']:
        lines.append(f'to supply before a real run: {m}')
    lines.append('nothing was written (--dry_run)')
    return '\n'.join(lines)

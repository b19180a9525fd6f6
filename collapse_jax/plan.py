"""What a job will do, checked before it starts: every config check composed (`validate`), each
mode's section parsed once into a plan (`StudyPlan`, `CalibratePlan`, `EntropyPlan`), the runs a
job makes (`runs_of`), and the cost model (`work`, `unet_flops`, `check_cpu_budget`) that the
CPU budget check, `--dry_run` (dryrun.py) and the TPU projection (aot.py) share.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax

from collapse_jax import data, diffusion, features, files, layout, measure, paradigms
from collapse_jax import train as train_lib
from collapse_jax.data import need


def ints(text, field: str, minimum: int = 0) -> tuple:
    """A comma-separated list of integers >= minimum, in its order, or one line naming the
    field."""
    try:
        vals = tuple(int(v) for v in str(text).split(','))
    except ValueError:
        vals = ()
    need(vals and min(vals) >= minimum, f'{field}={text!r}; allowed: integers >= {minimum}, '
         'comma-separated')
    return vals


def validate(cfg, dataset_size: int | None = None, with_files: bool = True):
    """Every section's own checks, composed; raises ValueError naming the field. with_files=False
    leaves out the files a run reads (weights, the TFDS data_dir): a dry run lists them apart."""
    check_top_level(cfg)
    for check in (train_lib.check_config, diffusion.check_config, paradigms.check_config,
                  measure.check_config):
        check(cfg)
    data.check_config(cfg, with_files)
    features.check_config(cfg, with_files)
    if dataset_size is not None:
        extra = paradigms.fresh_per_generation(cfg) * (cfg.loop.generations - 1)
        need(cfg.data.n + extra <= dataset_size,
             f'data.n={cfg.data.n} (+{extra} fresh) exceeds the {dataset_size} images of '
             f'data.source={cfg.data.source!r}')


def check_top_level(cfg) -> None:
    """The fields outside any section."""
    for field in ('seed', 'cpu_devices'):
        need(cfg[field] >= 0, f'{field}={cfg[field]}; must be >= 0')
    need(not files.isfile(os.path.expanduser(cfg.compilation_cache)),
         f"compilation_cache={cfg.compilation_cache!r} is a file; give a directory, 'auto' or "
         "'' (off)")
    if cfg.sweep:  # the form here; each variant's paradigm and rule by its own validate
        layout.parse_variants(cfg.sweep)


def sweep_configs(cfg, workdir, with_files: bool = True):
    """[(Variant, config, RunDir)] for cfg.sweep's variants (or the one configured, in workdir
    itself), all validated before any of them starts."""
    if not cfg.sweep:
        validate(cfg, with_files=with_files)
        return [(layout.Variant.of(cfg), cfg, layout.RunDir(workdir))]
    out = []
    for v in layout.parse_variants(cfg.sweep):
        sub = cfg.copy_and_resolve_references()
        sub.loop.paradigm, sub.loop.selection, sub.sweep = v.paradigm, v.rule, ''
        validate(sub, with_files=with_files)
        out.append((v, sub, layout.SweepDir(workdir).run(v)))
    return out


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """The study section, checked and parsed once (study_plan); every later step reads this.
    `shared`: the variants every seed runs (study.seed_variants; all of them if empty)."""
    ns: tuple
    seeds: tuple
    headline_n: int
    variants: tuple
    shared: tuple

    def variants_at(self, seed) -> tuple:
        """Every variant at the first seed; the shared ones at the others."""
        return self.variants if seed == self.seeds[0] else self.shared

    def runs(self) -> list:
        """[(n, seed)]: every N with the first seed, and every seed at the headline N."""
        return [(n, self.seeds[0]) for n in self.ns] + [(self.headline_n, s)
                                                       for s in self.seeds[1:]]

    def passes(self) -> list:
        """[(n, seed, variants)] in the order they run: the shared variants at every (N, seed)
        first, so that a study cut short already holds the seed spread; then each run's
        remaining variants (its finished ones resume at once)."""
        first = [(n, s, self.shared) for n, s in self.runs()]
        rest = [(n, s, self.variants_at(s)) for n, s in self.runs()
                if self.variants_at(s) != self.shared]
        return first + rest

    def labels(self) -> list:
        return [v.label for v in self.variants]


def study_plan(cfg) -> StudyPlan:
    """The checked study section; raises ValueError naming the field."""
    need('study' in cfg, '--mode=study needs a config with a study section '
         '(configs/study_cpu.py)')
    st = cfg.study
    ns, seeds = ints(st.ns, 'study.ns', 1), ints(st.seeds, 'study.seeds')
    need(st.headline_n in ns, f'study.headline_n={st.headline_n} must be one of '
         f'study.ns={st.ns!r}')
    every = tuple(layout.parse_variants(st.variants, 'study.variants'))
    shared = tuple(layout.parse_variants(st.seed_variants, 'study.seed_variants')) \
        if st.get('seed_variants', '') else every
    need(set(shared) <= set(every) and shared[0] == every[0],
         f'study.seed_variants={st.seed_variants!r} must be a subset of study.variants that '
         f'starts with its first variant ({every[0].label}, which trains generation 0)')
    return StudyPlan(ns, seeds, st.headline_n, every, shared)


@dataclasses.dataclass(frozen=True)
class CalibratePlan:
    """The calibrate section, checked and parsed once: the dataset sizes and step counts."""
    ns: tuple
    steps: tuple


def study_passes(cfg, p: StudyPlan, with_files: bool = True) -> list:
    """[(n, seed, config, sweep_configs of it)] of the study's passes, in order: each a sweep of
    the pass's variants, every variant of every pass validated before any work."""
    out = []
    for n, seed, variants in p.passes():
        sub = cfg.copy_and_resolve_references()
        sub.data.n, sub.seed = n, seed
        sub.sweep = ','.join(f'{v.paradigm}:{v.rule}' for v in variants)
        out.append((n, seed, sub, sweep_configs(sub, '/unused', with_files=with_files)))
    return out


def calibrate_plan(cfg) -> CalibratePlan:
    """The checked calibrate section as a CalibratePlan; raises ValueError naming the field."""
    need('calibrate' in cfg, '--mode=calibrate needs a config with a calibrate section '
         '(configs/calibrate_cpu.py)')
    c = cfg.calibrate
    need(c.generalize_z > 0, f'calibrate.generalize_z={c.generalize_z}; must be > 0')
    need(0 < c.generalize_mem <= 1, f'calibrate.generalize_mem={c.generalize_mem}; allowed: '
         '0 < x <= 1')
    need(c.copy_z < 0, f'calibrate.copy_z={c.copy_z}; must be < 0')
    need(cfg.score.eval_n >= 2, f'score.eval_n={cfg.score.eval_n}; calibrate needs >= 2 samples')
    return CalibratePlan(*(tuple(sorted(ints(c[f], f'calibrate.{f}', 1))) for f in ('ns', 'steps')))


@dataclasses.dataclass(frozen=True)
class EntropyPlan:
    """The entropy section, checked and parsed once."""
    parents: tuple
    seeds: tuple
    heldout_n: int
    shift: int
    scale: float


def entropy_plan(cfg) -> EntropyPlan:
    need('entropy' in cfg, '--mode=entropy needs a config with an entropy section '
         '(configs/entropy_cpu.py)')
    e = cfg.entropy
    parents, seeds = ints(e.parents, 'entropy.parents'), ints(e.seeds, 'entropy.seeds')
    need(e.heldout_n >= 2, f'entropy.heldout_n={e.heldout_n}; must be >= 2')
    need(0 <= e.shift < cfg.data.resolution // 2, f'entropy.shift={e.shift}; allowed: 0 <= x < '
         f'data.resolution / 2')
    need(0 <= e.scale < 1, f'entropy.scale={e.scale}; allowed: 0 <= x < 1')
    need(cfg.score.eval_n >= 2, f'score.eval_n={cfg.score.eval_n}; the samples need >= 2')
    return EntropyPlan(parents, seeds, e.heldout_n, e.shift, e.scale)


def runs_of(cfg, mode: str) -> list:
    """[(n, seed, [Variant])] of the job, every config validated as the job would."""
    if mode == 'entropy':
        p = entropy_plan(cfg)
        validate(cfg, with_files=False)
        return [(cfg.data.n, s, [layout.Variant.of(cfg)]) for s in p.seeds for _ in p.parents]
    if mode == 'study':
        p = study_plan(cfg)
        study_passes(cfg, p, with_files=False)
        return [(n, s, list(p.variants_at(s))) for n, s in p.runs()]
    if mode == 'calibrate':
        p = calibrate_plan(cfg)
        validate(cfg, with_files=False)
        return [(n, cfg.seed, [layout.Variant.of(cfg)]) for n in p.ns]
    return [(cfg.data.n, cfg.seed, [v for v, _, _ in sweep_configs(cfg, '/unused',
                                                                        with_files=False)])]


def work(cfg, runs) -> dict:
    """{'train_images', 'unet_evals'} of `runs` [(n, [Variant])]: every generation's training (the
    growing union for accumulate:none) and sampling (pool and evaluation sample). Generation 0 is
    trained and sampled once per run (a sweep shares it). Divide by rates for a time."""
    lp = cfg.loop
    evals_per_image = cfg.sample.steps * (2 if cfg.model.num_classes and cfg.sample.guidance != 1
                                          else 1)
    images = evals = 0
    for n, variants in runs:
        for g in range(lp.generations):
            for v in (variants[:1] if g == 0 else variants):
                size = paradigms.get(v.paradigm).train_size(g, n, lp.pool_factor, v.rule)
                images += train_lib.total_steps(cfg, size) * cfg.train.batch_size
                evals += (n * lp.pool_factor + cfg.score.eval_n) * evals_per_image
    return dict(train_images=images, unet_evals=evals)


def generations_trained(cfg, runs) -> int:
    """Generations `runs` [(n, [Variant])] train: generation 0 once per run (a sweep shares it),
    then every later generation of every variant (the ETA's total)."""
    return sum(1 + (cfg.loop.generations - 1) * len(variants) for _, variants in runs)


def unet_flops(cfg, graphdef, platform=None) -> float:
    """FLOPs of one UNet evaluation of one image, from XLA's analysis of the lowered (not yet
    optimized) program; a training image costs about 3x that (forward and backward)."""
    import jax.numpy as jnp
    from flax import nnx
    r, c = cfg.data.resolution, cfg.data.channels
    params = nnx.state(nnx.eval_shape(lambda: train_lib.make_model(cfg, 0, platform)))
    y = jnp.zeros((1,), jnp.int32) if cfg.model.num_classes else None
    fn = jax.jit(lambda p, x, t: nnx.merge(graphdef, p)(x, t, y))
    lowered = fn.trace(params, jax.ShapeDtypeStruct((1, r, r, c), jnp.float32),
                       jax.ShapeDtypeStruct((1,), jnp.int32)).lower(
        lowering_platforms=(platform or jax.default_backend(),))  # that platform's branches
    return float(lowered.cost_analysis()['flops'])


# A 2-core x86 CPU ran UNet48 at 0.22 (training) to 0.37 (sampling) of its dense matmul rate
# (README, Benchmark); the budget check takes the lower figure.
CPU_EFFICIENCY = 0.22


def check_cpu_budget(cfg, engine, cost: dict, what: str) -> None:
    """On the CPU, refuses work projected at more than a day, with one line that gives the
    projection and the override (config force_cpu). Once per engine (the job's first check)."""
    if jax.default_backend() != 'cpu' or cfg.force_cpu or engine.budget_checked:
        return
    engine.budget_checked = True
    import jax.numpy as jnp
    a = jnp.ones((1024, 1024), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    jax.block_until_ready(mm(a))
    t0 = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(mm(a))
    rate = 3 * 2 * 1024 ** 3 / (time.perf_counter() - t0) * jax.device_count()
    flops = unet_flops(cfg, engine.graphdef) * (3 * cost['train_images'] + cost['unet_evals'])
    hours = flops / (rate * CPU_EFFICIENCY) / 3600
    need(hours <= 24, f'{what} is projected at {hours:,.0f} hours on this CPU '
         f'({flops:.2g} FLOP at {rate * CPU_EFFICIENCY / 1e9:.0f} GFLOP/s, the JAX backend is '
         "'cpu'); install the GPU or TPU jaxlib (README, Install), or set "
         '--config.force_cpu=True to run it here anyway')


def study_cost(cfg) -> dict:
    """The study's work (`work`) over every (N, seed) run and its variants: {'train_images',
    'unet_evals'}. Divide by measured rates (python -m collapse_jax.bench) for a time."""
    p = study_plan(cfg)
    return work(cfg, [(n, p.variants_at(seed)) for n, seed in p.runs()])

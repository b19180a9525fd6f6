"""The study: the paper's findings at one scale, from raw data to figures, in one command.

  python main.py --mode=study --config=configs/study_cpu.py --workdir=runs/study

It runs every (N, seed) of `cfg.study` as a sweep of `cfg.study.variants` (each resumable like any
run, all sharing one compiled engine, each seed with its own initial weights), then draws the
figures and writes table.md, results.json and results.csv under <workdir>/figures
(study_report.py; layout.StudyDir has the paths). Rerunning the command skips finished work and
redraws. The study section is checked and parsed once, into a `Plan`.
"""
from __future__ import annotations

import dataclasses
import logging

from collapse_jax import files, layout, loop
from collapse_jax import engine as engine_lib
from collapse_jax.data import need

log = logging.getLogger('collapse_jax')

def _ints(text, field) -> tuple:
    """A comma-separated list of ints, or one line that names the field."""
    try:
        return tuple(int(v) for v in str(text).split(','))
    except ValueError:
        raise ValueError(f'{field}={text!r}; allowed: comma-separated integers') from None


@dataclasses.dataclass(frozen=True)
class Plan:
    """The study section, checked and parsed once (plan_of); every later step reads this.
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


def plan_of(cfg) -> Plan:
    """The checked study section; raises ValueError naming the field."""
    need('study' in cfg, '--mode=study needs a config with a study section '
         '(configs/study_cpu.py)')
    st = cfg.study
    ns, seeds = _ints(st.ns, 'study.ns'), _ints(st.seeds, 'study.seeds')
    need(st.headline_n in ns, f'study.headline_n={st.headline_n} must be one of '
         f'study.ns={st.ns!r}')
    every = tuple(layout.parse_variants(st.variants, 'study.variants'))
    shared = tuple(layout.parse_variants(st.seed_variants, 'study.seed_variants')) \
        if st.get('seed_variants', '') else every
    need(set(shared) <= set(every) and shared[0] == every[0],
         f'study.seed_variants={st.seed_variants!r} must be a subset of study.variants that '
         f'starts with its first variant ({every[0].label}, which trains generation 0)')
    return Plan(ns, seeds, st.headline_n, every, shared)


def _sweep(variants) -> str:
    return ','.join(f'{v.paradigm}:{v.rule}' for v in variants)


def run_study(cfg, workdir, engine=None):
    """Runs (or resumes) every pass of the study, then draws it. Returns the results dict."""
    p, sd = plan_of(cfg), layout.StudyDir(workdir)
    subs = []
    for n, seed, variants in p.passes():
        sub = cfg.copy_and_resolve_references()
        sub.data.n, sub.seed, sub.sweep = n, seed, _sweep(variants)
        subs.append((n, seed, sub))
    # every variant of every run validated before any work
    checked = [loop.sweep_configs(sub, '/unused') for _, _, sub in subs]
    engine = engine or engine_lib.Engine(checked[0][0][1])
    engine_lib.check_cpu_budget(cfg, engine, cost(cfg), 'this study')
    # the generations each pass trains (for the ETA): generation 0 once per run, then G - 1 for
    # each variant an earlier pass of the same run has not run
    adds, seen = [], set()
    for n, seed, sub in subs:
        new = [v for v in layout.parse_variants(sub.sweep) if (n, seed, v) not in seen]
        adds.append(len(new) * (cfg.loop.generations - 1) + ((n, seed) not in seen))
        seen |= {(n, seed, v) for v in new} | {(n, seed)}
    progress = engine_lib.Progress()
    for i, (n, seed, sub) in enumerate(subs):
        d = sd.sweep(n, seed).root
        log.info('study: N=%d seed=%d %s -> %s', n, seed, sub.sweep, d)
        loop.run(sub, d, engine=engine, later=sum(adds[i + 1:]), progress=progress)
    from collapse_jax import study_report
    return study_report.draw(cfg, workdir)


def cost(cfg):
    """The study's work (engine.work) over every (N, seed) run and its variants: {'train_images',
    'unet_evals'}. Divide by measured rates (python -m collapse_jax.bench) for a time."""
    p = plan_of(cfg)
    return engine_lib.work(cfg, [(n, p.variants_at(seed)) for n, seed in p.runs()])


def collect(p: Plan, workdir):
    """{(n, seed, 'paradigm/selection'): [records]} of the finished runs."""
    out, sd = {}, layout.StudyDir(workdir)
    for n, seed in p.runs():
        for v in p.variants_at(seed):
            rd = sd.run(n, seed, v)
            if files.exists(rd.metrics):
                out[(n, seed, v.label)] = rd.records()
    return out

"""The study: the paper's findings at one scale, from raw data to figures, in one command.

  python main.py --mode=study --config=configs/study_cpu.py --workdir=runs/study

It runs every (N, seed) of `cfg.study` as a sweep of `cfg.study.variants` (each resumable like any
run, all sharing one compiled engine, each seed with its own initial weights), then draws the
figures and writes table.md, results.json and results.csv under <workdir>/figures
(study_report.py; layout.StudyDir has the paths). Rerunning the command skips finished work and
redraws. The study section is checked and parsed once, into a plan.StudyPlan.
"""
from __future__ import annotations

import logging

from collapse_jax import layout, loop, plan, study_report
from collapse_jax import engine as engine_lib

log = logging.getLogger('collapse_jax')


def run_study(cfg, workdir, engine=None):
    """Runs (or resumes) every pass of the study, then draws it. Returns the results dict."""
    p, sd = plan.study_plan(cfg), layout.StudyDir(workdir)
    subs = plan.study_passes(cfg, p)
    engine = engine or engine_lib.Engine(subs[0][3][0][1])  # the first variant's config
    plan.check_cpu_budget(cfg, engine, plan.study_cost(cfg), 'this study')
    progress = engine_lib.Progress(plan.generations_trained(
        cfg, [(n, p.variants_at(seed)) for n, seed in p.runs()]))
    for n, seed, sub, _ in subs:
        d = sd.sweep(n, seed).root
        log.info('study: N=%d seed=%d %s -> %s', n, seed, sub.sweep, d)
        loop.run(sub, d, engine=engine, progress=progress)
    return study_report.draw(cfg, workdir)



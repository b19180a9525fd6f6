"""The paper's findings at CPU scale, at the paper's epochs (docs/RESULTS.md):
python main.py --mode=study --config=configs/study_cpu.py --workdir=runs/study

The paper trains about 500 epochs a generation. At N = 512 and 2,000 steps of 32 (125 epochs)
the tiny UNet degrades over generations without copying (docs/RESULTS.md, the 125-epoch study);
a probe at N = 256 and 4,000 steps (500 epochs) saw absolute copying rise 2% -> 31% in three
generations while copying relative to fresh draws stayed flat. This study measures both, side
by side: N = 256, 4,000 steps a generation, 5 generations (0-4), a 2N pool, seeds 0 and 1 (each
with its own initial weights).

Relative copying needs a large held-out set of fresh draws of the process that made D_g: the
evaluation sample holds 2,048 draws, which give 8 replicas of replace:none's D_g (2,048 held-out
images) and 4 of greedy's or threshold's (256 picked from 512 draws each: 1,024 images), so the
1% quantile rests on ten or more points. FD and recognizable use its first 1,000 (score.fd_n),
so the 5,000 embedded digits hold D_0, the FD reference and floor, and 2,048 held-out real images
for generation 0.

Budget (one sitting of about 3 h on 2 cores, one JAX device, since cpu_devices aborts or hangs
under load; README, `cpu_devices`): generation 0 is trained once per seed and shared by the
variants, so seeds 0 and 1 with replace:none and replace:greedy are 2 x (1 + 2 x 4) = 18
trained generations; seed 0's replace:threshold adds 4 and runs last (it is cut first if time
runs out). Measured: 1 h 50 min in all.
"""
import ml_collections

from configs import quick_cpu


def get_config():
    c = quick_cpu.get_config()
    c.data.n = 256
    c.loop.generations = 5
    c.train.steps = 4000
    c.train.warmup_steps = 50
    c.train.log_every = 500
    c.train.ckpt_every = 500
    c.score.eval_n = 2048            # held-out replicas for the copy measures (see above)
    c.score.fd_n = 1000              # FD, precision/recall, recognizable; fd_floor at 1,000
    c.study = ml_collections.ConfigDict()
    c.study.ns = '256'               # dataset sizes N, comma-separated
    c.study.seeds = '0,1'            # the first seed runs every N; the others the headline N
    c.study.headline_n = 256         # N of the selection comparison (with the seed spread)
    c.study.variants = 'replace:none,replace:greedy,replace:threshold'
    c.study.seed_variants = 'replace:none,replace:greedy'  # seeds after the first ('' = all)
    return c

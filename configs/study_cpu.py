"""The paper's findings at CPU scale, in the calibrated regime (docs/calibrate):
python main.py --mode=study --config=configs/study_cpu.py --workdir=runs/study

The calibration (configs/calibrate_cpu.py) found generation 0 generalizing at N = 512 after
2,000 steps (copy_z +0.3, nothing memorized, FD 14.8 against a floor of 1.6) while N = 128 at the
same steps sits closer to its training set than held-out digits do (copy_z -6.2) and N = 64
copies outright (24% memorized). So this study runs N = 512, 2,000 steps a generation, 6
generations, a 2N pool, with seeds 0 and 1 (each with its own initial weights).

Budget (3 h on 2 cores): with the host split into 2 JAX devices (cpu_devices) a generation takes
about 4.7 minutes, so seed 0 runs replace:none, replace:greedy and accumulate_subsample:none, and
seed 1 the replace pair: 26 trained generations, about 2 h. The replace pair runs first at both
seeds. Cut for time: replace:threshold (indistinguishable from greedy in the first study),
accumulate:greedy, and a smaller N.
"""
import ml_collections

from configs import quick_cpu


def get_config():
    c = quick_cpu.get_config()
    c.cpu_devices = 2                # data parallel over 2 CPU devices: 1.3-1.7x on 2 cores
    c.loop.generations = 6
    c.train.steps = 2000
    c.train.warmup_steps = 50
    c.train.log_every = 500
    c.train.ckpt_every = 500
    c.score.eval_n = 200             # FD, recognizable and copy_z's mirrors; fd_floor at 200
    c.study = ml_collections.ConfigDict()
    c.study.ns = '512'               # dataset sizes N, comma-separated
    c.study.seeds = '0,1'            # the first seed runs every N; the others the headline N
    c.study.headline_n = 512         # N of the selection comparison (with the seed spread)
    c.study.variants = 'replace:none,replace:greedy,accumulate_subsample:none'
    c.study.seed_variants = 'replace:none,replace:greedy'  # seeds after the first ('' = all)
    return c

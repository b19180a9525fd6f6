"""The paper's findings at CPU scale: python main.py --mode=study --config=configs/study_cpu.py
--workdir=runs/study (one command, from the embedded MNIST to figures).

Three dataset sizes (N = 32, 64, 128), 4 generations each, a 2N pool; vanilla replace and
vanilla accumulate (accumulate_subsample) beside replace and accumulate with greedy and with
threshold selection; a second seed at the headline N = 64 for the spread. The model, sampler and
feature space are those of configs/quick_cpu.py (FD in the digits classifier's space).
"""
import ml_collections

from configs import quick_cpu


def get_config():
    c = quick_cpu.get_config()
    c.loop.generations = 4
    c.train.steps = 300
    c.train.ckpt_every = 150
    c.study = ml_collections.ConfigDict()
    c.study.ns = '32,64,128'           # dataset sizes N, comma-separated
    c.study.seeds = '0,1'              # the first seed runs every N; the others the headline N
    c.study.headline_n = 64            # N of the selection comparison (with the seed spread)
    c.study.variants = ('replace:none,accumulate_subsample:none,replace:greedy,'
                        'replace:threshold,accumulate:greedy,accumulate:threshold')
    return c

"""The paper's CIFAR-10 study (arXiv 2509.16499), ready for TPU/GPU.

UNet48 at 32x32x3, N = 32,768, 500 epochs per generation, 1000-step ancestral sampling, a pool
of 2N per generation; replace and accumulate, each with no selection, greedy and threshold-decay
selection, run one after another under <workdir>/<paradigm>_<selection>.
Needs the TFDS cifar10 dataset prepared under data.data_dir (no download at run time).
"""
from configs import default


def get_config():
    c = default.get_config()
    c.sweep = ('replace:none,replace:greedy,replace:threshold,'
               'accumulate:none,accumulate:greedy,accumulate:threshold')
    c.data.source = 'cifar10'
    c.data.n = 32768
    c.model.preset = 'UNet48'
    c.train.epochs = 500
    c.train.batch_size = 128
    c.train.ckpt_every = 2000
    c.sample.steps = 1000
    c.sample.batch_size = 1024
    c.loop.generations = 8
    c.loop.pool_factor = 2
    return c

"""The README's main job: embedded MNIST on a 2-core CPU in about ten minutes.

Three generations of replace/none beside replace/greedy, a tiny UNet at 16x16, N = 128, 600
steps a generation, a respaced 50-step sampler, a 128-image evaluation sample. The cheap side of
the calibrated regime (docs/calibrate): at N = 128 generation 0 generalizes (it does not copy)
and draws digits, but it is trained for minutes. A quick look, not a result.
"""
from configs import default


def get_config():
    c = default.get_config()
    c.sweep = 'replace:none,replace:greedy'
    c.data.source = 'mnist5k'
    c.data.resolution = 16
    c.data.channels = 1
    c.data.n = 128
    c.model.preset = 'tiny'
    c.model.layers_per_block = 1
    c.train.batch_size = 32
    c.train.steps = 600
    c.train.warmup_steps = 50
    c.train.lr = 2e-3
    c.train.log_every = 100
    c.train.ckpt_every = 300
    c.sample.steps = 50
    c.sample.batch_size = 128
    c.loop.generations = 3
    c.loop.pool_factor = 2
    c.score.feature_space = 'digits'  # FD and precision/recall in the digits classifier's space
    c.score.eval_n = 128
    return c

"""Where generation 0 generalizes and where it copies, on a 2-core CPU:
python main.py --mode=calibrate --config=configs/calibrate_cpu.py --workdir=runs/calibrate

The quick run's model (tiny UNet, 16x16 embedded MNIST, batch 32, lr 2e-3, a 50-step sampler)
at N = 64 ... 1024, with checkpoints at 1k, 2k and 4k steps of one 4k-step run per N; each
checkpoint draws 1,000 samples (score.eval_n) against 1,000 held-out real digits.
"""
import ml_collections

from configs import quick_cpu


def get_config():
    c = quick_cpu.get_config()
    c.sweep = ''
    c.train.log_every = 500
    c.train.ckpt_every = 1000
    c.score.eval_n = 1000
    c.calibrate = ml_collections.ConfigDict()
    c.calibrate.ns = '64,128,256,512,1024'   # dataset sizes N
    c.calibrate.steps = '1000,2000,4000'      # training steps measured (one run per N)
    c.calibrate.generalize_z = 3.0            # generalizes: |copy_z| <= this ...
    c.calibrate.generalize_mem = 0.1          # ... and memorized share <= this
    c.calibrate.copy_z = -5.0                 # copies: copy_z <= this (or memorized >= 0.5)
    return c

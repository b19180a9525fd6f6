"""Does lower-entropy training data make the model copy? (collapse_jax/entropy.py)
python main.py --mode=entropy --config=configs/entropy_cpu.py --workdir=runs/entropy

The 500-epoch study's generation 0 (N = 256, 4,000 steps of the tiny UNet on 16x16 embedded
MNIST), trained on sets of equal size whose entropy is set by the number of parent digits K:
K = 8, 16, 32, 64, 128, each draw a parent shifted by up to 2 pixels and scaled in intensity by
up to 10%, and plain real digits (K = 0). H: 1,024 further draws of the same law (held-out real
digits for K = 0). 1,024 samples per cell, measured against D with H as the held-out set. Two
seeds: 12 cells, about 6 minutes each on 2 cores (one JAX device).
"""
import ml_collections

from configs import study_cpu


def get_config():
    c = study_cpu.get_config()
    del c['study']
    c.sweep = ''
    c.score.eval_n = 1024           # samples per cell (relative copying, FD, recognizable)
    c.score.fd_n = 1000             # FD and recognizable on the first 1,000
    c.entropy = ml_collections.ConfigDict()
    c.entropy.parents = '8,16,32,64,128,0'  # K parent digits per set; 0 = plain real digits
    c.entropy.seeds = '0,1'
    c.entropy.heldout_n = 1024      # H: further draws of P_K
    c.entropy.shift = 2             # pixels each way (zero fill)
    c.entropy.scale = 0.1           # intensity factor in [1 - scale, 1 + scale]
    return c

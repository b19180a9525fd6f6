"""The paper's CIFAR-10 study (arXiv 2509.16499), ready for TPU/GPU.

UNet48 at 32x32x3, N = 32,768, 500 epochs per generation, 1000-step ancestral sampling, a pool
of 2N per generation; replace and accumulate, each with no selection, greedy and threshold-decay
selection, run one after another under <workdir>/<paradigm>_<selection>. The paper's vanilla
accumulate keeps N images (about N/(g+2) from each source): accumulate_subsample here.
Selection, entropy and GS in DINOv2-S/14 feature space (tau0 = 60), FD as FID (Inception-v3),
as in the paper. Needs the TFDS cifar10 dataset prepared under data.data_dir and the two weights
files (no download at run time):
  --config.features.dinov2=dinov2_vits14_pretrain.pth  (facebookresearch/dinov2)
  --config.features.inception=pt_inception-2015-12-05-6726825d.pth  (pytorch-fid)
(.pth needs torch at load time; `python -m collapse_jax.features convert` makes .safetensors.)
"""
from configs import default


def get_config():
    c = default.get_config()
    c.sweep = ('replace:none,replace:greedy,replace:threshold,'
               'accumulate_subsample:none,accumulate:greedy,accumulate:threshold')
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
    c.loop.feature_space = 'dinov2'
    c.score.feature_space = 'inception'
    c.score.eval_n = 10000            # FID on 10k samples apart from the pool
    return c

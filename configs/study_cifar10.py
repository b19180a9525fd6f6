"""The study at the paper's scale: the same command as the CPU study, with this config.

  python main.py --mode=study --config=configs/study_cifar10.py --workdir=runs/study_cifar10 \
    --config.features.dinov2=dinov2_vits14_pretrain.pth \
    --config.features.inception=pt_inception-2015-12-05-6726825d.pth

Everything else is configs/cifar10_paper.py (UNet48 at 32x32x3, 1000-step sampling, 8
generations, pool 2N, selection in DINOv2 space, FD as FID). The paper scales epochs as 1/N
(32768 -> 500, 16384 -> 1000, 2048 -> 8000): that is a fixed 128,000 steps of batch 128 for
every N, which train.steps sets here. README "Full scale" gives the hardware and time it takes.
"""
import ml_collections

from configs import cifar10_paper, study_cpu


def get_config():
    c = cifar10_paper.get_config()
    c.train.steps = 500 * 32768 // 128   # = 128,000: the paper's epochs x N / batch, any N
    c.study = ml_collections.ConfigDict(study_cpu.get_config().study.to_dict())
    c.study.ns = '2048,16384,32768'
    c.study.headline_n = 32768
    c.study.variants = c.sweep      # every variant of the paper's config, at every seed
    c.study.seed_variants = ''
    return c

"""The paper's classifier-free guidance experiment on MNIST, at CPU size on the embedded digits.

A class-conditional UNet (labels dropped to the null label 10% of the time in training) samples
with guidance scale w = 2, the paper's value; the pool is balanced over the 10 classes and keeps
its labels, so the next generation trains class-conditionally too. Vanilla replace against
greedy and threshold selection. For the paper's scale: --config.data.source=mnist
(TFDS, prepared), --config.data.resolution=32, --config.model.preset=UNet48, and the N and
epochs of configs/cifar10_paper.py.
"""
from configs import quick_cpu


def get_config():
    c = quick_cpu.get_config()
    c.sweep = 'replace:none,replace:greedy,replace:threshold'
    c.model.num_classes = 10
    c.model.label_dropout = 0.1
    c.sample.guidance = 2.0
    c.data.n = 100                  # 10 per class on average
    c.sample.batch_size = 100       # divisible by the 4 devices of a test and by 10 classes
    return c

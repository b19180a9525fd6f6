"""The paper's accumulate table at CPU scale, to its iteration 8 (docs/RESULTS.md):
python main.py --mode=study --config=configs/study_accumulate_cpu.py --workdir=runs/study_accumulate

The 500-epoch study's model and data (N = 256, 4,000 steps of the tiny UNet a generation, 16x16
embedded MNIST, a 2N pool, 2,048 evaluation draws) for 8 generations, 0 to 7: generation g is
the paper's iteration g + 1 (iteration 1 trains on real data), so generation 7 is its iteration
8. Three variants of accumulate, each keeping N images a generation:
  accumulate_subsample:none  the paper's vanilla accumulate: D_g takes about N/(g+1) from the
                             real data and from each of the g pools so far;
  accumulate:greedy          greedy farthest-point in pixels over D_0 and every pool so far;
  accumulate:threshold       the threshold-decay filter over the same candidates (tau0 = 2000 in
                             0-255 pixels, alpha = 0.95: the reference values for pixels).
Seed 0. Generation 0 is trained once and shared: 1 + 3 x 7 = 22 trained generations, 6.2-6.5
minutes each on 2 idle cores with one JAX device (selection over the growing candidate set, up
to N + 7 x 2N = 3,840 images, takes seconds).
"""
from configs import study_cpu


def get_config():
    c = study_cpu.get_config()
    c.loop.generations = 8
    c.study.seeds = '0'
    c.study.variants = 'accumulate_subsample:none,accumulate:greedy,accumulate:threshold'
    c.study.seed_variants = ''
    return c

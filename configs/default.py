"""Every field of a collapse_jax run, with the paper's reference values (arXiv 2509.16499 and its
reference code; README, "Configs").

Experiment files import this and change a handful of fields. The config is locked, so a
misspelled override (`--config.loop.selction=greedy`) is an error.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0                      # base seed: data subset, init, per-step keys, selection
    c.distributed = False           # call jax.distributed.initialize() (TPU pod slice, multi-node)
    # > 0: split the host CPU into this many JAX devices before JAX starts (main.py). On a
    # multi-core CPU, data parallelism over them beats XLA's intra-op threads for small UNets
    # (2 on 2 cores: 1.3x the train steps per second). No effect on GPU or TPU devices.
    c.cpu_devices = 0
    # The CPU refuses a config projected at more than a day there (engine.check_cpu_budget: the
    # run's training images and sampler evaluations at this CPU's measured matmul rate); True runs
    # it anyway. Install the GPU or TPU jaxlib instead (README, "Install").
    c.force_cpu = False
    # XLA's persistent compilation cache, shared by every process, restart and study variant
    # ('' = off; a path, ~ expanded, gs:// allowed). 'auto': ~/.cache/collapse_jax/xla on one
    # process, <workdir>/xla_cache with `distributed` (JAX writes it from process 0 only, so it
    # must live where every host reads it).
    c.compilation_cache = 'auto'
    # Run several (paradigm:selection) variants, each in <workdir>/<paradigm>_<selection>, and
    # draw them on shared axes; '' runs loop.paradigm / loop.selection in <workdir> itself.
    c.sweep = ''

    c.data = d = ml_collections.ConfigDict()
    d.source = 'cifar10'            # 'mnist5k' | 'digits' (embedded) | TFDS name | .npy | folder
    d.split = 'train'               # TFDS split
    d.data_dir = ''                 # TFDS data_dir ('' = TFDS default); never downloads
    d.resolution = 32               # images are resized or padded to resolution x resolution
    d.channels = 3                  # 1 or 3
    d.resize = 'resize'             # 'resize' (bilinear) or 'pad' (centre zero-pad)
    d.n = 32768                     # N: size of every generation's training set

    c.model = m = ml_collections.ConfigDict()
    m.preset = 'UNet48'             # UNet32 | UNet48 | UNet64 | UNet128 | small | tiny
    m.layers_per_block = 2          # resnets per down level (up levels get one more)
    m.num_classes = 0               # > 0: class-conditional with a null label for CFG
    m.label_dropout = 0.1           # CFG: share of training labels replaced by the null label
    m.dtype = 'auto'                # compute dtype: auto (bf16 on GPU/TPU, f32 on CPU), float32,
                                    # bfloat16; params, optimizer state and EMA stay f32

    c.diffusion = f = ml_collections.ConfigDict()
    f.num_steps = 1000              # DDPM training steps T
    f.beta_start = 1e-4             # linear beta schedule
    f.beta_end = 0.02

    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 128              # global batch, split over all devices
    t.epochs = 500                  # per generation; the paper scales it as 1 / N
    t.steps = 0                     # > 0 overrides epochs with a fixed step count
    t.lr = 1e-4                     # AdamW peak learning rate
    t.b1 = 0.95
    t.b2 = 0.999
    t.eps = 1e-8
    t.weight_decay = 1e-6
    t.warmup_steps = 500            # linear warm-up, then cosine decay to 0
    t.grad_clip = 1.0               # global-norm clipping
    t.ema = False                   # keep an EMA of the weights (and sample from it)
    t.ema_decay = 0.9999            # max EMA decay; warm-up min(decay, (1 + n) / (10 + n))
    t.log_every = 100               # steps between progress lines (loss, images/s)
    t.ckpt_every = 1000             # steps between preemption checkpoints
    t.feed = 'device'               # 'device': D_g stays on every device, batches gathered there;
                                    # 'host': gathered in NumPy, sent each step (D_g too big)
    t.steps_per_call = 1            # train steps per compiled call (lax.scan; feed 'device')

    c.sample = s = ml_collections.ConfigDict()
    s.steps = 1000                  # ancestral steps (respaced 'leading' like diffusers if < T)
    s.batch_size = 512              # images per compiled sampler call, split over devices
    s.clip_x0 = True                # clip the predicted x0 to [-1, 1] (diffusers' default)
    s.variance = 'fixed_small'      # 'fixed_small' (diffusers' default) or 'fixed_large'
    s.guidance = 1.0                # CFG scale w: eps_null + w (eps_cond - eps_null)

    c.loop = l = ml_collections.ConfigDict()
    l.generations = 8               # G: generations 0..G-1 are trained
    l.paradigm = 'replace'          # replace | accumulate | accumulate_subsample | fresh
    l.selection = 'none'            # none | random | greedy | threshold
    l.pool_factor = 2               # candidate pool per generation = pool_factor x N (1, 2, 5)
    l.fresh_fraction = 0.1          # paradigm 'fresh': share of new real images per generation
    l.feature_space = 'pixel'       # selection's space: pixel | digits | inception | dinov2
    l.tau = 0.0                     # threshold tau0; 0 = 2000 (pixels 0-255) or 60 (features)
    l.decay = 0.0                   # threshold alpha; 0 = 0.95, or 0.80 for accumulate in a
                                    # feature space (the reference code's choice)

    c.score = sc = ml_collections.ConfigDict()
    sc.k = 1                        # k of the Kozachenko-Leonenko entropy
    sc.mem_ratio = 1 / 3            # memorized if d1 / d2 < mem_ratio; memorization_calibrated:
                                    # d1 < mem_ratio x the median real-to-D_0 nearest distance
    sc.grid = 64                    # images in each sample grid
    sc.nn_pairs = 16                # generated/nearest-training pairs in the NN grid
    # Space of the Frechet distance and precision/recall ('' = loop.feature_space; 'inception'
    # makes the FD an FID). Entropy and GS are recorded in pixels and in loop.feature_space.
    sc.feature_space = ''
    sc.pr_k = 3                     # k of the k-NN manifold precision/recall
    # Evaluation sample E_g, drawn apart from the pool: FD, precision/recall and recognizable
    # are measured on it against as many held-out real images (fd_floor: two such real sets),
    # and D_{g+1}'s construction repeated on it (paradigms.heldout_set) gives the held-out set
    # of the next generation's copy measures (copy_z, copy_auc, copy_share_q*): as many
    # replicas of N images from pool_factor x N draws as it holds (from N draws under none and
    # random). 0 = none (FD on the pool, copy measures at generation 0 only).
    sc.eval_n = 1000
    # Images of E_g in the FD, precision/recall and recognizable (and so the size of the real
    # reference and of the floor's second set); 0 = all of E_g. Lets E_g be large for the copy
    # measures' held-out replicas while the real data still holds the FD's reference sets.
    sc.fd_n = 0

    # Feature-network weights, local files in the PyTorch layout (.safetensors, .npz, or .pth
    # converted with `python -m collapse_jax.features convert`); nothing is downloaded.
    c.features = fe = ml_collections.ConfigDict()
    fe.digits = ''                  # digits CNN weights ('' = the project's fixed, hash-checked
                                    # collapse_jax/assets/digits_cnn.npz)
    fe.inception = ''               # Inception-v3 FID weights (pytorch-fid's pt_inception-*.pth)
    fe.dinov2 = ''                  # DINOv2 ViT-S/14 weights (dinov2_vits14_pretrain.pth)
    fe.batch_size = 64              # images per compiled feature-network call
    return c

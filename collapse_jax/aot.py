"""Compile for a TPU slice you do not have, on any machine:

  python -m collapse_jax.aot --config=configs/cifar10_paper.py --topology=v5e:2x2 [--mfu=0.3]

With libtpu installed (`pip install .[tpu]`, or TPU_LIBRARY_PATH naming a libtpu.so) and JAX on
the CPU, `jax.experimental.topologies` describes the slice's devices; each program is lowered at
the config's sizes and shardings and compiled by the TPU compiler for them:
  train step   the config's batch split over every device, state replicated, donated; with
               train.feed 'device' (the default) D_g's N images on every device too
  sampler      one batch of the config's sample.batch_size, split over every device
  knn          the scorer's kNN of the pool against D_g in pixels, the queries split over the
               devices of a host (as neighbours.knn runs), uint8 in
  greedy       farthest-point selection of N from the largest candidate set, in the selection's
               feature space (uint8 pixels: the exact integer path; features: float32), the
               candidates split over them
For each it prints the bytes per device (arguments, temporaries, outputs, less donated buffers)
against the chip's HBM, and FLOPs: per train step and per UNet evaluation of one image (XLA's
analysis: the compiled train step's, and the lowered UNet's), and the run's (or the study's)
projected hours on the slice at --mfu of its bf16 peak. --json writes the same as one object.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # the compile needs libtpu, not a TPU

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# chip: (HBM bytes per chip, bf16 peak FLOP/s per chip): Google Cloud's published figures
CHIPS = {'v4': (32 * 2 ** 30, 275e12), 'v5e': (16 * 2 ** 30, 197e12),
         'v5p': (95 * 2 ** 30, 459e12), 'v6e': (32 * 2 ** 30, 918e12)}
FEATURE_DIMS = {'digits': 128, 'inception': 2048, 'dinov2': 384}

config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_string('topology', 'v5e:2x2',
                    f'TPU slice, <chip>:<AxB[xC]>; chips: {", ".join(CHIPS)}')
flags.DEFINE_float('mfu', 0.3, 'model FLOP utilisation assumed for the projected hours')
flags.DEFINE_string('json', '', 'also write the results here')
flags.DEFINE_list('only', ['train', 'sampler', 'knn', 'greedy'], 'programs to compile')
FLAGS = flags.FLAGS


def topology(name: str):
    """(devices, chip, chips) of a slice such as 'v5e:2x2'; one line if libtpu is missing."""
    from jax.experimental import topologies
    chip = name.split(':')[0]
    if chip not in CHIPS or ':' not in name:
        raise ValueError(f'--topology={name!r}; allowed: <chip>:<AxB[xC]>, chips: '
                         f'{", ".join(CHIPS)}')
    try:
        desc = topologies.get_topology_desc(topology_name=name, platform='tpu')
    except Exception as e:  # noqa: BLE001 - no libtpu, or a shape libtpu does not know
        raise RuntimeError(f'--topology={name}: no TPU description ({type(e).__name__}: '
                           f'{" ".join(str(e).split())[:200]}); install libtpu (pip install '
                           '.[tpu]) or point TPU_LIBRARY_PATH at a libtpu.so') from None
    chips = 1
    for a in name.split(':')[1].split('x'):
        chips *= int(a)
    return list(desc.devices), chip, chips


def memory(compiled) -> dict:
    m = compiled.memory_analysis()
    out = dict(argument=m.argument_size_in_bytes, temporary=m.temp_size_in_bytes,
               output=m.output_size_in_bytes, donated=m.alias_size_in_bytes)
    out['total'] = out['argument'] + out['temporary'] + out['output'] - out['donated']
    return out


def _abstract(tree, sharding):
    import jax
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


PROGRAMS = ('train', 'sampler', 'knn', 'greedy')


def compile_all(cfg, devices, only=PROGRAMS) -> dict:
    """{program: {'memory': bytes per device, ...}} for the config on `devices`, and the UNet's
    FLOPs per evaluation of one image ('flops_per_eval')."""
    import jax
    from flax import nnx
    from collapse_jax import parallel, plan, train
    mesh = parallel.make_mesh(devices)
    graphdef = train.model_graph(cfg, 'tpu')
    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: train.make_model(cfg, 0, 'tpu'))))
    key = jax.eval_shape(lambda: jax.random.key(0))
    out = dict(flops_per_eval=plan.unet_flops(cfg, graphdef, 'tpu'))

    if 'train' in only:
        out['train step'] = train_program(cfg, graphdef, params, key, mesh)
    if 'sampler' in only:
        out['sampler'] = sample_program(cfg, graphdef, params, key, mesh)
    if 'knn' in only:
        out['knn'] = knn_program(cfg, devices)
    if 'greedy' in only:
        out['greedy'] = greedy_program(cfg, devices)
    return out


def train_program(cfg, graphdef, params, key, mesh) -> dict:
    import jax
    import jax.numpy as jnp
    from collapse_jax import diffusion, parallel, train
    r, c, b = cfg.data.resolution, cfg.data.channels, cfg.train.batch_size
    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    steps = train.total_steps(cfg, cfg.data.n)
    tx = train.make_optimizer(cfg, steps)
    state = jax.eval_shape(lambda p: train.init_state(p, tx, cfg.train.ema), params)
    # one step a call (train.steps_per_call scans the same step)
    step = train.make_train_step(graphdef, tx, diffusion.alphas_cumprod(cfg), cfg, mesh)
    if cfg.train.feed == 'host':  # one batch, split over the devices
        data = (jax.ShapeDtypeStruct((b, r, r, c), jnp.uint8, sharding=dat),
                jax.ShapeDtypeStruct((b,), jnp.int32, sharding=dat))
    else:  # D_g (N images) on every device, and the rows of each step's batch
        n = cfg.data.n
        data = (jax.ShapeDtypeStruct((n, r * r * c), jnp.uint8, sharding=rep),
                jax.ShapeDtypeStruct((n,), jnp.int32, sharding=rep),
                jax.ShapeDtypeStruct((1, b), jnp.int32, sharding=rep))
    compiled = step.lower(_abstract(state, rep), *data, key).compile()
    cost = compiled.cost_analysis()  # of one device's program
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return dict(memory=memory(compiled), batch=b, batch_per_device=dat.shard_shape((b,))[0],
                feed=cfg.train.feed, flops=float(cost['flops']) * mesh.size)


def sample_program(cfg, graphdef, params, key, mesh) -> dict:
    import jax
    import jax.numpy as jnp
    from collapse_jax import diffusion, parallel
    r, c = cfg.data.resolution, cfg.data.channels

    bs, rep, dat = cfg.sample.batch_size, parallel.replicated(mesh), parallel.data_sharding(mesh)
    sampler = diffusion.make_sampler(
        graphdef, diffusion.sampler_coefficients(diffusion.alphas_cumprod(cfg), cfg.sample.steps,
                                                 cfg.sample.variance),
        shape=(r, r, c), clip_x0=cfg.sample.clip_x0, guidance=cfg.sample.guidance,
        num_classes=cfg.model.num_classes, sharding=dat)
    compiled = sampler.lower(_abstract(params, rep), key,
                             jax.ShapeDtypeStruct((bs,), jnp.int32, sharding=dat)).compile()
    return dict(memory=memory(compiled), batch=bs)


def knn_program(cfg, devices) -> dict:
    """The scorer as it runs on a host of the slice: the pool's queries split over its devices,
    D_g replicated (neighbours.knn's shard_map)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from collapse_jax import neighbours, parallel
    n, d = cfg.data.n, cfg.data.resolution ** 2 * cfg.data.channels
    mesh, per = parallel.local_mesh(devices), -(-n * cfg.loop.pool_factor // len(devices))
    compiled = neighbours.sharded_knn(tuple(devices)).lower(
        jax.ShapeDtypeStruct((per * len(devices), d), jnp.uint8,
                             sharding=NamedSharding(mesh, P(parallel.ROWS))),
        jax.ShapeDtypeStruct((n, d), jnp.uint8, sharding=NamedSharding(mesh, P()))).compile()
    return dict(memory=memory(compiled), queries=per * len(devices), refs=n, dim=d)


def greedy_program(cfg, devices) -> dict:
    """Greedy selection of N from the largest candidate set, the candidates split over the
    devices (selection.greedy_select): uint8 pixels (the integer path), or float32 features (the
    TPU's float arithmetic)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from collapse_jax import paradigms, parallel, selection
    n, d = cfg.data.n, cfg.data.resolution ** 2 * cfg.data.channels
    pool, variants = n * cfg.loop.pool_factor, engine_variants(cfg)
    m = max(paradigms.get(v.paradigm).candidate_count(cfg.loop.generations - 2, n, pool)
            for v in variants) if cfg.loop.generations > 1 else pool
    m += (-m) % len(devices)
    fd = FEATURE_DIMS.get(cfg.loop.feature_space, d)
    mesh = parallel.local_mesh(devices)
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))
    dtype = jnp.uint8 if cfg.loop.feature_space == 'pixel' else jnp.float32
    compiled = selection.greedy_loop.lower(
        jax.ShapeDtypeStruct((m, fd), dtype, sharding=NamedSharding(mesh, P(parallel.ROWS))), n,
        scalar, scalar, mesh).compile()
    return dict(memory=memory(compiled), candidates=m, picks=n, dim=fd)


def engine_variants(cfg):
    from collapse_jax import layout
    return layout.parse_variants(cfg.sweep) if cfg.sweep else [layout.Variant.of(cfg)]


def project(cfg, flops_per_eval, chip, chips, mfu) -> dict:
    """The run's (or, with a study section, the study's) hours on the slice at `mfu`."""
    from collapse_jax import plan
    work = plan.study_cost(cfg) if 'study' in cfg else plan.work(
        cfg, [(cfg.data.n, engine_variants(cfg))])
    flops = flops_per_eval * (3 * work['train_images'] + work['unet_evals'])
    hours = flops / (chips * CHIPS[chip][1] * mfu) / 3600
    return dict(work, flops=flops, hours=hours, mfu=mfu, what='study' if 'study' in cfg else 'run')


def main(argv):
    del argv
    cfg = FLAGS.config
    try:
        devices, chip, chips = topology(FLAGS.topology)
        for field, batch in (('train.batch_size', cfg.train.batch_size),
                             ('sample.batch_size', cfg.sample.batch_size)):
            if batch % len(devices):
                raise ValueError(f'{field}={batch} must be divisible by the {len(devices)} '
                                 f'devices of {FLAGS.topology}')
        bad = sorted(set(FLAGS.only) - set(PROGRAMS))
        if bad:
            raise ValueError(f'--only={",".join(FLAGS.only)}: unknown {bad}; allowed: '
                             f'{", ".join(PROGRAMS)}')
        res = compile_all(cfg, devices, FLAGS.only)
    except (ValueError, RuntimeError) as e:
        sys.exit(f'error: {e}')
    hbm = CHIPS[chip][0] * chips // len(devices)
    res['projection'] = project(cfg, res['flops_per_eval'], chip, chips, FLAGS.mfu)
    res.update(topology=FLAGS.topology, devices=len(devices), device_kind=devices[0].device_kind,
               hbm_per_device=hbm, compute_dtype=cfg.model.dtype)
    gib = 2 ** 30
    print(f'{FLAGS.topology}: {len(devices)} x {devices[0].device_kind}, '
          f'{hbm / gib:.0f} GiB HBM per device')
    print(f"{'program':<12} {'args':>9} {'temp':>9} {'out':>9} {'total GiB':>10} {'of HBM':>7}")
    for name in [p for p in ('train step', 'sampler', 'knn', 'greedy') if p in res]:
        m = res[name]['memory']
        print(f"{name:<12} {m['argument'] / gib:>9.3f} {m['temporary'] / gib:>9.3f} "
              f"{m['output'] / gib:>9.3f} {m['total'] / gib:>10.3f} {m['total'] / hbm:>7.1%}")
    p = res['projection']
    if 'train step' in res:
        t = res['train step']
        print(f"train step: batch {t['batch']} ({t['batch_per_device']} per device), "
              f"{t['flops'] / 1e12:.2f} TFLOP")
    print(f"UNet evaluation: {res['flops_per_eval'] / 1e9:.2f} GFLOP per image")
    print(f"the {p['what']}: {p['train_images']:.3g} training images, {p['unet_evals']:.3g} UNet "
          f"evaluations, {p['flops']:.3g} FLOP: {p['hours']:,.1f} hours at {p['mfu']:.0%} MFU")
    if FLAGS.json:
        from collapse_jax import files
        files.save_json(FLAGS.json, res)


if __name__ == '__main__':
    app.run(main)

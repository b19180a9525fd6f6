"""The benchmark: python -m collapse_jax.bench [--quick] [--out=bench.jsonl] [--only=knn,greedy]
(--device [--smoke]: the accelerator benchmark, bench/device.py)

Measures on whatever device JAX finds, each beside its PyTorch / scikit-learn / faiss peer where
that is installed (requirements-bench.txt), in one run so that ratios are side by side:
  roofline  dense matmul rate through JAX (the machine's limit for the scorer)
  knn       kNN entropy (k = 1) at d = 3072; peers: sklearn NearestNeighbors + KL, faiss
  greedy    farthest-point selection; peer: the reference's PyTorch loop (.item() per pick)
  sampler   ancestral sampler images/s; peer: diffusers DDPMPipeline with the same UNet
  train     train-step images/s; peer: a PyTorch loop with diffusers' UNet, AdamW, clipping
With UNet48 training and sampling both measured, it projects the paper-scale study's time
(configs/study_cifar10.py, plan.study_cost) at those rates. Prints a table and writes one JSON object per measurement. Times are the best of a few runs
after a warm-up (compilation excluded and reported apart).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import numpy as np
import jax
import jax.numpy as jnp

from collapse_jax import files, scoring, selection
from collapse_jax.bench.peers import (diffusers_unet, threshold_per_visit, torch_greedy,
                                      torch_train_step_time)

SIZES = {  # full: the sizes; quick: a few minutes on a 2-core CPU
    'full': dict(knn_n=16384, greedy_n=16384, greedy_m=8192, d=3072, roofline=4096,
                 sampler=[('UNet48', 1000, 16), ('UNet48', 100, 16), ('small', 1000, 16),
                          ('small', 100, 16)], train=[('UNet48', 128), ('small', 128)],
                 peer_picks=256, threshold_n=8192, threshold_d=256),
    'quick': dict(knn_n=4096, greedy_n=4096, greedy_m=2048, d=3072, roofline=2048,
                  sampler=[('small', 100, 8), ('UNet48', 20, 4)],
                  train=[('small', 32), ('UNet48', 8)],
                  peer_picks=128, threshold_n=1000, threshold_d=256),
}


def best_time(fn, repeats=3):
    """Seconds of the fastest of `repeats` calls (fn blocks until its result is ready)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def have(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def record(rows, name, value, unit, peer=None, peer_name=None, higher_is_better=True, **extra):
    r = dict(name=name, value=value, unit=unit, device=jax.devices()[0].device_kind, **extra)
    if peer is not None:
        r.update(peer=peer_name, peer_value=peer,
                 ratio=(value / peer) if higher_is_better else (peer / value))
    rows.append(r)
    print(_row(r), flush=True)
    return r


def _row(r):
    ratio = f"{r['ratio']:.2f}x" if 'ratio' in r else ''
    peer = f"{r['peer_value']:.4g} ({r['peer']})" if 'peer' in r else ''
    return f"{r['name']:<44} {r['value']:>12.4g} {r['unit']:<10} {peer:<34} {ratio:>8}"


# ----------------------------------------------------------------------------- roofline

def bench_roofline(rows, size):
    out = {}
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    dtypes = [('float32', jnp.float32, jax.lax.Precision.HIGHEST)]
    if jax.default_backend() != 'cpu':
        dtypes.append(('bfloat16', jnp.bfloat16, jax.lax.Precision.DEFAULT))
    for name, dt, prec in dtypes:
        x = a.astype(dt)
        f = jax.jit(lambda p, q: jnp.matmul(p, q, precision=prec))
        f(x, x).block_until_ready()
        s = best_time(lambda: f(x, x).block_until_ready(), 5)
        out[name] = 2 * size ** 3 / s / 1e9
        record(rows, f'matmul {size}^3 {name}', out[name], 'GFLOP/s')
    return out


# ----------------------------------------------------------------------------- kNN entropy

def _openblas_core():
    """OPENBLAS_CORETYPE for faiss: the faiss-cpu wheel bundles an older OpenBLAS (0.3.15 in
    1.15.1) that takes CPUs newer than itself for 'Prescott', SSE3 kernels 4-5x slower than the
    machine's. Unless the user set it, name the core that numpy's (newer) OpenBLAS detected.
    Returns the value in force, or None."""
    try:
        import threadpoolctl
        core = next((i.get('architecture') for i in threadpoolctl.threadpool_info()
                     if i.get('internal_api') == 'openblas'), None)
    except ImportError:
        core = None
    if core and 'faiss' not in sys.modules:
        os.environ.setdefault('OPENBLAS_CORETYPE', core)
    return os.environ.get('OPENBLAS_CORETYPE')


def bench_knn(rows, n, d, matmul_rate):
    """Ours takes the pixels as the project stores them (uint8); the peers take float32, converted
    before their clocks start."""
    pixels = np.random.default_rng(0).integers(0, 256, (n, d), dtype=np.uint8)
    x = pixels.astype(np.float32)
    t0 = time.perf_counter()
    h = scoring.knn_entropy(pixels)
    first = time.perf_counter() - t0
    s = best_time(lambda: scoring.knn_entropy(pixels), 2)
    block = min(1024, n)  # self_knn multiplies each pair of blocks I <= J once
    nb = -(-n // block)
    executed = 2.0 * d * block * block * nb * (nb + 1) / 2
    rate = executed / s / 1e9
    peers = {}
    if have('sklearn'):
        from sklearn.neighbors import NearestNeighbors
        t0 = time.perf_counter()
        dist, _ = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
        peers['sklearn'] = (time.perf_counter() - t0,
                            scoring.entropy_from_distances(dist[:, 1], d))
    core = _openblas_core()  # before faiss loads its own OpenBLAS
    if have('faiss'):
        import faiss

        def run_faiss():
            index = faiss.IndexFlatL2(d)
            index.add(x)
            return index.search(x, 2)[0]
        dist = run_faiss()
        peers['faiss'] = (best_time(run_faiss, 2),
                          scoring.entropy_from_distances(np.sqrt(np.maximum(dist[:, 1], 0)),
                                                         d))
    name = f'knn entropy n={n} d={d} k=1'
    if not peers:
        record(rows, name, s, 's', higher_is_better=False, entropy=h, compile_s=max(first - s, 0.0))
    for peer, (ps, ph) in peers.items():
        record(rows, name, s, 's', ps, peer, higher_is_better=False, entropy=h,
               peer_entropy=ph, entropy_abs_diff=abs(h - ph), compile_s=max(first - s, 0.0),
               **(dict(openblas_coretype=core) if peer == 'faiss' else {}))
    if matmul_rate:
        record(rows, 'knn scorer rate / matmul rate', rate / matmul_rate, 'fraction',
               scorer_gflops=rate, matmul_gflops=matmul_rate, executed_gflop=executed / 1e9,
               dense_equivalent_gflops=2.0 * n * n * d / s / 1e9)


# ----------------------------------------------------------------------------- greedy

def bench_greedy(rows, n, m, d, peer_picks):
    x = np.random.default_rng(1).integers(0, 256, (n, d), dtype=np.uint8)
    t0 = time.perf_counter()
    ours = selection.greedy_select(x, m, first=0)
    first = time.perf_counter() - t0
    s = best_time(lambda: selection.greedy_select(x, m, first=0), 2)
    # the same pixels as float64 (the arithmetic before the integer path): time, same picks
    xf = x.astype(np.float64)
    f64 = selection.greedy_select(xf, m, first=0)
    f64_s = best_time(lambda: selection.greedy_select(xf, m, first=0), 1)
    name = f'greedy select {m} of {n} d={d}'
    arith = dict(arithmetic=selection.arithmetic(x), float64_s=f64_s,
                 float64_picks_identical=int(np.sum(f64 == ours)))
    if not have('torch'):
        record(rows, name, s, 's', higher_is_better=False, compile_s=max(first - s, 0.0),
               **arith)
        return
    import torch
    xt = torch.from_numpy(x.astype(np.float32))
    k = min(peer_picks, m)  # the peer's per-pick cost is constant: time k picks, scale to m
    t0 = time.perf_counter()
    ref = torch_greedy(xt, k)
    ps = (time.perf_counter() - t0) * (m - 1) / (k - 1)
    same = int(np.sum(np.asarray(ref) == ours[:k]))
    exact = torch_greedy(torch.from_numpy(x.astype(np.float64)), k,
                         mode='donot_use_mm_for_euclid_dist')
    record(rows, name, s, 's', ps, f'torch loop (timed on {k} picks, scaled)',
           higher_is_better=False, picks_compared=k, picks_identical=same,
           picks_identical_to_exact_loop=int(np.sum(np.asarray(exact) == ours[:k])),
           compile_s=max(first - s, 0.0), **arith)


def bench_threshold(rows, n, d, factor=5, tau=2000.0, decay=0.95):
    """The threshold rule at a factor x N pool of uint8 pixels (tau0 = 2000, the reference's
    pixel value): lazy updates against the per-visit baseline, same picks."""
    x = np.random.default_rng(2).integers(0, 256, (factor * n, d), dtype=np.uint8)
    t0 = time.perf_counter()
    ours, info = selection.threshold_select(x, n, tau, decay, seed=0, return_info=True)
    first = time.perf_counter() - t0
    s = best_time(lambda: selection.threshold_select(x, n, tau, decay, seed=0), 2)
    xf64 = x.astype(np.float64)  # float64, the arithmetic before the integer path
    f64 = selection.threshold_select(xf64, n, tau, decay, seed=0)
    f64_s = best_time(lambda: selection.threshold_select(xf64, n, tau, decay, seed=0), 1)
    order = jnp.asarray(np.random.default_rng(0).permutation(len(x)), jnp.int32)
    xf = jnp.asarray(x, jnp.float32)
    old = np.asarray(threshold_per_visit(xf, order, n, tau, decay))  # compile
    ps = best_time(lambda: np.asarray(threshold_per_visit(xf, order, n, tau, decay)), 1)
    record(rows, f'threshold select {n} of {factor * n} d={d}', s, 's', ps,
           'the per-visit rule (before)', higher_is_better=False, passes=info['passes'],
           picks_compared=n, picks_identical=int(np.sum(old == ours)),
           compile_s=max(first - s, 0.0), arithmetic=selection.arithmetic(x), float64_s=f64_s,
           float64_picks_identical=int(np.sum(f64 == ours)))


# ----------------------------------------------------------------------------- UNet peers

def bench_sampler(rows, preset, steps, batch, peak):
    from collapse_jax import diffusion, unet
    from flax import nnx
    model = unet.make_unet(preset, in_channels=3)
    graphdef, params = nnx.split(model)
    chain = diffusion.sampler_coefficients(diffusion.linear_alphas_cumprod(1000, 1e-4, 0.02), steps)
    sampler = diffusion.make_sampler(graphdef, chain, shape=(32, 32, 3))
    y = jnp.zeros((batch,), jnp.int32)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    jax.block_until_ready(sampler(params, key, y))
    first = time.perf_counter() - t0
    s = best_time(lambda: jax.block_until_ready(sampler(params, key, y)), 2)
    ips = batch / s
    flops = unet_flops(graphdef, params, batch)
    mfu = flops * steps / s / (peak * 1e9) if peak else None
    name = f'sampler {preset} 32x32x3 steps={steps} batch={batch}'
    extra = dict(compile_s=max(first - s, 0.0), unet_gflop_per_image=flops / batch / 1e9, mfu=mfu,
                 params=unet.count_params(model), unet_evals_per_s=ips * steps)
    if not (have('torch') and have('diffusers')):
        record(rows, name, ips, 'img/s', **extra)
        return
    import torch
    import diffusers
    pipe = diffusers.DDPMPipeline(unet=diffusers_unet(preset).eval(),
                                  scheduler=diffusers.DDPMScheduler(
                                      num_train_timesteps=1000, beta_schedule='linear'))
    pipe.set_progress_bar_config(disable=True)
    run = lambda: pipe(batch_size=batch, num_inference_steps=steps, output_type='np',  # noqa
                       generator=torch.manual_seed(0))
    with torch.inference_mode():
        pt = best_time(run, 1)
    record(rows, name, ips, 'img/s', batch / pt, 'diffusers DDPMPipeline', **extra)


def unet_flops(graphdef, params, batch):
    """FLOPs of one UNet evaluation on a batch, from XLA's cost analysis of the compiled call."""
    from flax import nnx
    f = jax.jit(lambda p, x, t: nnx.merge(graphdef, p)(x, t))
    x = jnp.zeros((batch, 32, 32, 3))
    cost = f.lower(params, x, jnp.zeros((batch,), jnp.int32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get('flops', 0.0))


def bench_train(rows, preset, batch):
    from configs import default
    from collapse_jax import diffusion, parallel, train
    cfg = default.get_config()
    cfg.model.preset, cfg.train.batch_size, cfg.train.feed = preset, batch, 'host'
    mesh = parallel.make_mesh()
    graphdef, params = train.model_graph(cfg), train.init_params(cfg)
    tx = train.make_optimizer(cfg, 1000)
    state = train.init_state(params, tx, False)
    step = train.make_train_step(graphdef, tx, diffusion.alphas_cumprod(cfg), cfg, mesh)
    images = parallel.shard_batch(mesh, np.random.default_rng(0).integers(
        0, 256, (batch, 32, 32, 3), dtype=np.uint8))
    labels = parallel.shard_batch(mesh, np.zeros((batch,), np.int32))
    key = jax.random.key(0)
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(step(state, images, labels, key))
    first = time.perf_counter() - t0
    holder = {'s': state}

    def five():
        for _ in range(5):
            holder['s'], metrics = step(holder['s'], images, labels, key)
        jax.block_until_ready(metrics)
    s = best_time(five, 2) / 5
    name = f'train step {preset} 32x32x3 batch={batch}'
    if not (have('torch') and have('diffusers')):
        record(rows, name, batch / s, 'img/s', compile_s=max(first - s, 0.0))
        return
    pt = torch_train_step_time(preset, batch, cfg)
    record(rows, name, batch / s, 'img/s', batch / pt, 'torch loop (diffusers UNet, AdamW)',
           compile_s=max(first - s, 0.0))


def project_study(rows, config='study_cifar10'):
    """The paper-scale study's time on this machine (one device), from the UNet48 train and
    sampler rates measured in this run (the fastest batch of each) and plan.study_cost."""
    import importlib
    from collapse_jax import plan
    pick = lambda prefix, key: max((r[key] for r in rows if r['name'].startswith(prefix)),  # noqa
                                   default=None)
    train_ips, evals_ps = pick('train step UNet48', 'value'), pick('sampler UNet48',
                                                                  'unet_evals_per_s')
    if not (train_ips and evals_ps):
        return None
    c = plan.study_cost(importlib.import_module(f'configs.{config}').get_config())
    hours = (c['train_images'] / train_ips + c['unet_evals'] / evals_ps) / 3600
    return record(rows, f'{config} projected, 1 device', hours, 'hours', **c,
                  train_img_per_s=train_ips, unet_evals_per_s=evals_ps)


# ----------------------------------------------------------------------------- entry

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='CPU-sized problems (a few minutes)')
    ap.add_argument('--only', default='roofline,knn,greedy,threshold,sampler,train',
                    help='comma-separated subset of: roofline, knn, greedy, threshold, sampler, '
                         'train')
    ap.add_argument('--out', default='', help='one JSON object per measurement (default '
                    'bench.jsonl, or bench_device.jsonl with --device)')
    ap.add_argument('--device', action='store_true', help='the accelerator benchmark '
                    '(bench/device.py): limits, UNet48 sampler and train step in bf16 and f32, '
                    'kNN, greedy, and the torch peers in a second process')
    ap.add_argument('--smoke', action='store_true', help='with --device: toy sizes (CPU)')
    ap.add_argument('--budget_s', type=float, default=None, help='with --device: seconds the '
                    'run may take (default 420; none with --smoke); a section that would not fit '
                    'is skipped (a row says so)')
    ap.add_argument('--peers_python', default='', help='with --device: the Python that runs the '
                    'torch peers (a CUDA torch virtualenv beside JAX\'s); default: this one')
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    if args.device:
        if not args.smoke and jax.default_backend() == 'cpu':
            sys.exit("error: --device runs accelerator sizes, but JAX's backend is 'cpu' (no GPU "
                     "or TPU started): install the accelerator's jaxlib (pip install -e "
                     '".[cuda12]", ".[cuda13]" or ".[tpu]"), or add --smoke for toy sizes')
        from collapse_jax.bench import device
        return device.main(args.out or 'bench_device.jsonl', smoke=args.smoke,
                           budget_s=args.budget_s if args.budget_s is not None else
                           math.inf if args.smoke else 420.0, peers_python=args.peers_python)
    if args.smoke:
        sys.exit('error: --smoke goes with --device')
    args.out = args.out or 'bench.jsonl'
    parts = args.only.split(',')
    bad = sorted(set(parts) - {'roofline', 'knn', 'greedy', 'threshold', 'sampler', 'train'})
    if bad:
        sys.exit(f'error: --only={args.only!r}: unknown {bad}; allowed: roofline, knn, greedy, '
                 'threshold, sampler, train')
    z = SIZES['quick' if args.quick else 'full']
    if have('torch'):
        import torch
        print(f'torch threads: {torch.get_num_threads()}')
    print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}),'
          f' {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; '
          f'jax {jax.__version__}')
    print(f"{'measure':<44} {'ours':>12} {'unit':<10} {'peer':<34} {'ratio':>8}")
    rows = []
    rates = bench_roofline(rows, z['roofline']) if 'roofline' in parts else {}
    peak = rates.get('bfloat16') or rates.get('float32')
    if 'knn' in parts:
        bench_knn(rows, z['knn_n'], z['d'], rates.get('float32'))
    if 'greedy' in parts:
        bench_greedy(rows, z['greedy_n'], z['greedy_m'], z['d'], z['peer_picks'])
    if 'threshold' in parts:
        bench_threshold(rows, z['threshold_n'], z['threshold_d'])
    if 'sampler' in parts:
        for preset, steps, batch in z['sampler']:
            bench_sampler(rows, preset, steps, batch, peak)
    if 'train' in parts:
        for preset, batch in z['train']:
            bench_train(rows, preset, batch)
    project_study(rows)
    files.save_jsonl(args.out, rows)
    print(f'wrote {len(rows)} measurements to {args.out}')
    return rows


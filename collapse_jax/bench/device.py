"""The accelerator benchmark: python -m collapse_jax.bench --device [--smoke] [--out=FILE]

One script, most important rows first, one JSON object appended to --out after every row (a run
cut short keeps what it measured):
  limits   dense matmul in bf16, TF32 (f32 at default precision) and FP32 (highest), and HBM
           bandwidth: what the rest is measured against
  sampler  UNet48 in bf16 and f32 at batch 256 and 1,024: UNet evaluations/s, images/s at 1,000
           steps, MFU against the chip's spec peak and against the matmul measured above; FLOPs
           from the lowered program, checked against the README's per-evaluation count
  train    the UNet48 train step in bf16 and f32 at batch 128 and 512, as training runs it: fed from
           the host (train.feed 'host': a NumPy gather and transfer per step), from the device
           (the default: D_g on the device, the batch gathered there) and from the device with
           10 steps a call (train.steps_per_call, lax.scan)
  knn      the kNN scorer's rate at n = 16,384, d = 3,072
  greedy   greedy selection, int8 (exact) against f64 and f32: time, and how many picks agree
  peers    in a second process, so that each framework has the whole device (bench/peers.py):
           diffusers' DDPMPipeline loop in fp32 and bf16, a torch train step with bf16 autocast
           and fused AdamW, torch blocked-matmul kNN (faiss-gpu if installed); then a ratio row
           (ours over the peer's speed) for each pair
--smoke runs the same code at toy sizes (the `tiny` UNet at 8x8, one batch size), so it is
known to work on the CPU before it meets a GPU (tests/test_bench.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import jax
import jax.numpy as jnp

from collapse_jax import files

# dense peak FLOP/s by precision, and HBM bytes/s, from the vendors' datasheets
SPEC = {'NVIDIA H200': dict(bfloat16=989e12, tf32=494e12, float32=67e12, hbm=4.8e12),
        'NVIDIA H100 80GB HBM3': dict(bfloat16=989e12, tf32=494e12, float32=67e12, hbm=3.35e12),
        'NVIDIA A100-SXM4-80GB': dict(bfloat16=312e12, tf32=156e12, float32=19.5e12, hbm=2.0e12),
        'TPU v5 lite': dict(bfloat16=197e12, hbm=819e9),
        'TPU v5': dict(bfloat16=459e12, hbm=2.8e12),
        'TPU v4': dict(bfloat16=275e12, hbm=1.2e12)}
SIZES = {
    'device': dict(preset='UNet48', res=32, matmul=8192, bw_elems=2 ** 28,
                   sample_batches=(256, 1024),
                   sample_steps=20, train_batches=(128, 512), train_steps=40, train_scan=10,
                   knn_n=16384,
                   knn_d=3072, greedy_m=16384, greedy_n=8192, greedy_d=3072, evals=1.0e9),
    'smoke': dict(preset='tiny', res=8, matmul=256, bw_elems=2 ** 20, sample_batches=(4,),
                  sample_steps=2, train_batches=(4,), train_steps=4, train_scan=2, knn_n=256,
                  knn_d=64,
                  greedy_m=256, greedy_n=64, greedy_d=64, evals=None),
}


class Rows:
    """Each row printed and appended to the JSONL file as soon as it is measured."""

    def __init__(self, path):
        self.path, self.rows = path, []
        self.device = jax.devices()[0].device_kind
        self.spec = SPEC.get(self.device, {})

    def add(self, name, value, unit, **extra):
        r = dict(name=name, value=value, unit=unit, device=self.device,
                 backend=jax.default_backend(), **extra)
        self.rows.append(r)
        files.append_jsonl(self.path, r)
        more = ', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
                         for k, v in extra.items() if v is not None)
        print(f'{name:<52} {value:>12.4g} {unit:<10} {more}', flush=True)
        return r


def timed(fn, repeats=3):
    """(seconds of the fastest call after a warm-up, seconds of the warm-up: compile and run)."""
    from collapse_jax.bench import best_time
    run = lambda: jax.block_until_ready(fn())  # noqa: E731
    first = best_time(run, 1)
    return best_time(run, repeats), first


def limits(rows, z) -> dict:
    """Measured matmul rates {bfloat16, tf32, float32} (FLOP/s) and HBM bandwidth."""
    n, out = z['matmul'], {}
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    for name, dtype, prec in (('bfloat16', jnp.bfloat16, jax.lax.Precision.DEFAULT),
                              ('tf32', jnp.float32, jax.lax.Precision.DEFAULT),
                              ('float32', jnp.float32, jax.lax.Precision.HIGHEST)):
        x = a.astype(dtype)
        f = jax.jit(lambda p, q, prec=prec: jnp.matmul(p, q, precision=prec))
        s, _ = timed(lambda: f(x, x), 5)
        out[name] = 2 * n ** 3 / s
        peak = rows.spec.get(name)
        rows.add(f'matmul {n}^3 {name}', out[name] / 1e12, 'TFLOP/s',
                 of_spec=out[name] / peak if peak else None)
    x = jnp.ones((z['bw_elems'],), jnp.float32)
    f = jax.jit(lambda v: v * 2.0 + 1.0)
    s, _ = timed(lambda: f(x), 5)
    bw = 2 * x.nbytes / s  # read once, write once
    rows.add(f'memory bandwidth ({x.nbytes / 2 ** 20:.0f} MiB read + written)', bw / 1e9, 'GB/s',
             of_spec=bw / rows.spec['hbm'] if 'hbm' in rows.spec else None)
    return out


def _config(z, dtype, batch=None):
    from configs import default
    cfg = default.get_config()
    cfg.model.preset, cfg.model.dtype = z['preset'], dtype
    cfg.data.resolution = z['res']
    if batch:
        cfg.train.batch_size = batch
    return cfg


def _mfu(rows, flop_rate, dtype, measured):
    peak = rows.spec.get(dtype)
    return dict(mfu_spec=flop_rate / peak if peak else None,
                mfu_measured=flop_rate / measured[dtype] if measured.get(dtype) else None)


def sampler(rows, z, measured):
    from collapse_jax import diffusion, engine, parallel, train
    mesh = parallel.make_mesh()
    for dtype in ('bfloat16', 'float32'):
        cfg = _config(z, dtype)
        graphdef, params = train.model_graph(cfg), train.init_params(cfg)
        flops = engine.unet_flops(cfg, graphdef)
        steps = z['sample_steps']
        fn = diffusion.make_sampler(
            graphdef, diffusion.sampler_coefficients(diffusion.alphas_cumprod(cfg), steps),
            shape=(z['res'], z['res'], 3), sharding=parallel.data_sharding(mesh))
        for b in z['sample_batches']:
            y = parallel.shard_batch(mesh, np.zeros((b,), np.int32))
            s, first = timed(lambda: fn(params, jax.random.key(0), y), 2)
            evals = b * steps / s
            rows.add(f'sampler {z["preset"]} {dtype} batch={b}', evals, 'evals/s',
                     img_per_s_at_1000_steps=evals / 1000, gflop_per_eval=flops / 1e9,
                     gflop_check=None if z['evals'] is None else flops / z['evals'],
                     compile_s=max(first - s, 0.0), **_mfu(rows, evals * flops, dtype, measured))


def train_steps(rows, z, measured):
    """The train step as Engine.train runs it: fed from the host (rows gathered in NumPy and sent
    each step), from the device (D_g on the device, the batch gathered there), and from the
    device with train_scan steps a call (lax.scan)."""
    from collapse_jax import diffusion, engine, parallel, train
    mesh, per_call = parallel.make_mesh(), z['train_scan']
    for dtype in ('bfloat16', 'float32'):
        for b in z['train_batches']:
            data = np.random.default_rng(0).integers(0, 256, (8 * b, z['res'], z['res'], 3),
                                                     dtype=np.uint8)
            labels = np.zeros(len(data), np.int32)
            on_device = (parallel.replicate(mesh, data.reshape(len(data), -1)),
                         parallel.replicate(mesh, labels))
            flops = None
            for feed, k in (('host', 1), ('device', 1), ('device', per_call)):
                cfg = _config(z, dtype, b)
                cfg.train.feed = feed
                graphdef = train.model_graph(cfg)
                flops = flops or 3 * engine.unet_flops(cfg, graphdef)  # per image, fwd + bwd
                tx = train.make_optimizer(cfg, 1000)
                step = train.make_train_step(graphdef, tx, diffusion.alphas_cumprod(cfg), cfg,
                                             mesh, k)
                hold = {'s': jax.device_put(train.init_state(train.init_params(cfg), tx, False),
                                            parallel.replicated(mesh))}
                key = jax.random.key(0)

                def run(feed=feed, k=k, step=step, hold=hold, key=key):
                    for i in range(0, z['train_steps'], k):
                        rows_ = np.stack([train.batch_indices(len(data), b, i + j, 0, 0)
                                          for j in range(k)])
                        if feed == 'host':  # as Engine.train with feed 'host'
                            x, y = data[rows_[0]], labels[rows_[0]]
                            hold['s'], m = step(hold['s'], parallel.shard_batch(mesh, x),
                                                parallel.shard_batch(mesh, y), key)
                        else:
                            hold['s'], m = step(hold['s'], *on_device, parallel.replicate(
                                mesh, rows_.astype(np.int32)), key)
                    return m['loss']
                s, first = timed(run, 2)
                ips = b * z['train_steps'] / s
                how = f'{feed}' + (f', {k} steps a call' if k > 1 else '')
                rows.add(f'train step {z["preset"]} {dtype} batch={b} fed from {how}', ips,
                         'img/s', compile_s=max(first - s, 0.0), gflop_per_img=flops / 1e9,
                         **_mfu(rows, ips * flops, dtype, measured))


def knn(rows, z, measured):
    from collapse_jax import scoring
    n, d = z['knn_n'], z['knn_d']
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (n, d)), jnp.float32)
    s, first = timed(lambda: scoring.knn(x, x, k=1, exclude_self=True), 2)
    rate = 2.0 * n * n * d / s
    rows.add(f'knn scorer n={n} d={d}', rate / 1e12, 'TFLOP/s', seconds=s,
             compile_s=max(first - s, 0.0), of_fp32_matmul=rate / measured['float32'])


def greedy(rows, z):
    """The integer path (uint8 pixels, int8 x int8 -> int32, exact) against float64 and float32 on
    the same pixels: time, and how many picks agree with the exact ones."""
    from collapse_jax import selection
    m, n, d = z['greedy_m'], z['greedy_n'], z['greedy_d']
    x = np.random.default_rng(1).integers(0, 256, (m, d), dtype=np.uint8)
    picks, times = {}, {}
    for name, dtype in (('int8', jnp.uint8), ('float64', jnp.float64), ('float32', jnp.float32)):
        with jax.enable_x64(dtype == jnp.float64):
            xd = jnp.asarray(x, dtype)
            run = lambda: selection._greedy(xd, n, jnp.int32(0), jnp.int32(m))  # noqa: E731
            times[name], _ = timed(run, 1)
            picks[name] = np.asarray(run())
    rows.add(f'greedy {n} of {m} d={d} int8', times['int8'], 's', float64_s=times['float64'],
             float32_s=times['float32'], picks=n,
             **{f'{k}_picks_identical': int(np.sum(picks[k] == picks['int8']))
                for k in ('float64', 'float32')})


def peers(rows, z, smoke):
    """The torch peers in their own process (the whole device for each framework)."""
    cmd = [sys.executable, '-c', 'import sys; from collapse_jax.bench.peers import device_main; '
           'device_main(sys.argv[1:])', '--out', rows.path,
           '--preset', z['preset'], '--res', str(z['res']), '--steps', str(z['sample_steps']),
           '--sample-batches', ','.join(map(str, z['sample_batches'])),
           '--train-batches', ','.join(map(str, z['train_batches'])),
           '--knn', f"{z['knn_n']},{z['knn_d']}"]
    p = subprocess.run(cmd + (['--smoke'] if smoke else []), capture_output=True, text=True)
    sys.stdout.write(p.stdout)
    if p.returncode:
        rows.add('peers', float('nan'), '', error=' '.join(p.stderr.split())[-300:])


def main(out, smoke=False):
    z = SIZES['smoke' if smoke else 'device']
    rows = Rows(out)
    if os.path.exists(out):
        os.remove(out)
    print(json.dumps(dict(device=rows.device, devices=jax.device_count(),
                          backend=jax.default_backend(), jax=jax.__version__, smoke=smoke)))
    measured = limits(rows, z)
    sampler(rows, z, measured)
    train_steps(rows, z, measured)
    knn(rows, z, measured)
    greedy(rows, z)
    peers(rows, z, smoke)
    ratios(rows, z)
    print(f'wrote {len(files.read_jsonl(out))} rows to {out}')
    return files.read_jsonl(out)


def ratios(rows, z):
    """Ours over the peer's speed, for each pair measured in this run (same sizes, same device)."""
    got = {r['name']: r['value'] for r in files.read_jsonl(rows.path)}
    p = z['preset']
    pairs = [(f'sampler {p} {d} batch={b}', f'peer DDPMPipeline loop {p} {d} batch={b}')
             for d in ('bfloat16', 'float32') for b in z['sample_batches']]
    pairs += [(f'train step {p} bfloat16 batch={b} fed from device',
               f'peer torch train step {p} bf16 autocast, fused AdamW batch={b}')
              for b in z['train_batches']]
    pairs.append((f"knn scorer n={z['knn_n']} d={z['knn_d']}",
                  f"peer torch blocked-matmul knn n={z['knn_n']} d={z['knn_d']}"))
    for ours, peer in pairs:
        if ours in got and peer in got and got[peer] > 0:
            rows.add(f'ratio: {ours} / peer', got[ours] / got[peer], 'x', peer=peer)

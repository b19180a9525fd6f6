"""The accelerator benchmark: python -m collapse_jax.bench --device [--smoke] [--out=FILE]
[--budget_s=420] [--peers_python=PYTHON]

One script for a short first window on a new machine. Sections run in order of value (limits;
the sampler in bf16 at the large batch; kNN; greedy; the train step in bf16 at batch 128; the
threshold filter at accumulate's size; then the rest and the peers). A section whose estimate
does not fit in what is left of --budget_s gets a `skipped` row with the seconds left; one that
raises gets a `failed` row with its one-line error, and the next section runs. Every row is
appended to --out as it is measured (never deleted: earlier runs' rows stay) and names the run
id, the device kind and the jax, jaxlib and CUDA versions. The sections:
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
  threshold the threshold-decay filter at accumulate's last candidate set in DINOv2's space
           (N = 32,768 from 5N = 163,840 candidates, d = 384, float32)
  peers    in a second process, so that each framework has the whole device (bench/peers.py),
           under --peers_python if given (a CUDA torch virtualenv beside JAX's), with a timeout;
           a `skipped` row where torch sees no GPU: diffusers' DDPMPipeline loop in fp32 and bf16,
           a torch train step with bf16 autocast and fused AdamW, torch blocked-matmul kNN; then
           a ratio row (ours over the peer's speed) for each pair measured in this run
MFU is taken against the peak of the arithmetic used: bf16; float32 matmuls at default precision
run as TF32 on NVIDIA GPUs and as bf16 passes on TPUs; FP32 at HIGHEST.
Device sizes refuse a CPU backend (bench/__init__.py), so a failed CUDA start cannot run them
on the CPU.
--smoke runs the same code at toy sizes (the `tiny` UNet at 8x8, one batch size), so it is
known to work on the CPU before it meets a GPU (tests/test_bench.py).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import jax
import jax.numpy as jnp

from collapse_jax import files

# dense (no sparsity) peak FLOP/s by arithmetic, and HBM bytes/s, from the vendors' datasheets,
# by JAX's device_kind
_H100 = dict(bfloat16=989e12, tf32=494e12, float32=67e12)
_A100 = dict(bfloat16=312e12, tf32=156e12, float32=19.5e12)
SPEC = {'NVIDIA H200': dict(_H100, hbm=4.8e12),
        'NVIDIA H100 80GB HBM3': dict(_H100, hbm=3.35e12),  # SXM
        'NVIDIA H100 PCIe': dict(bfloat16=756e12, tf32=378e12, float32=51e12, hbm=2.0e12),
        'NVIDIA A100-SXM4-80GB': dict(_A100, hbm=2.04e12),
        'NVIDIA A100-SXM4-40GB': dict(_A100, hbm=1.56e12),
        'NVIDIA L4': dict(bfloat16=121e12, tf32=60e12, float32=30e12, hbm=300e9),
        'TPU v4': dict(bfloat16=275e12, hbm=1.2e12),
        'TPU v5 lite': dict(bfloat16=197e12, hbm=819e9),  # v5e
        'TPU v5': dict(bfloat16=459e12, hbm=2.77e12),     # v5p
        'TPU v6 lite': dict(bfloat16=918e12, hbm=1.64e12)}  # v6e
SIZES = {
    'device': dict(preset='UNet48', res=32, matmul=8192, bw_elems=2 ** 28,
                   sample_batches=(256, 1024),
                   sample_steps=20, train_batches=(128, 512), train_steps=40, train_scan=10,
                   knn_n=16384,
                   knn_d=3072, greedy_m=16384, greedy_n=8192, greedy_d=3072, evals=1.0e9,
                   threshold_m=163840, threshold_n=32768, threshold_d=384),
    'smoke': dict(preset='tiny', res=8, matmul=256, bw_elems=2 ** 20, sample_batches=(4,),
                  sample_steps=2, train_batches=(4,), train_steps=4, train_scan=2, knn_n=256,
                  knn_d=64,
                  greedy_m=256, greedy_n=64, greedy_d=64, evals=None, threshold_m=320,
                  threshold_n=64, threshold_d=16),
}


def versions() -> dict:
    import jaxlib
    try:
        platform = jax.devices()[0].client.platform_version
    except Exception:  # noqa: BLE001 - a backend without one
        platform = ''
    return dict(jax=jax.__version__, jaxlib=jaxlib.__version__, platform_version=platform)


class Rows:
    """Each row printed and appended to the JSONL file as soon as it is measured, with this
    run's id, the device and the versions."""

    def __init__(self, path):
        self.path, self.rows = path, []
        self.device = jax.devices()[0].device_kind
        self.spec = SPEC.get(self.device, {})
        self.run_id = f'{time.strftime("%Y%m%dT%H%M%S")}-{os.getpid()}'
        self.tags = dict(run_id=self.run_id, device=self.device, backend=jax.default_backend(),
                         **versions())

    def add(self, name, value, unit, **extra):
        r = dict(name=name, value=value, unit=unit, **self.tags, **extra)
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


def arithmetic(dtype: str, backend: str) -> str:
    """The arithmetic a matmul in `dtype` at default precision runs in: float32 is TF32 on
    NVIDIA GPUs and bf16 passes on TPUs."""
    if dtype == 'bfloat16':
        return 'bfloat16'
    return {'gpu': 'tf32', 'tpu': 'bfloat16'}.get(backend, 'float32')


def _mfu(rows, flop_rate, dtype, measured):
    arith = arithmetic(dtype, jax.default_backend())
    peak = rows.spec.get(arith)
    return dict(arithmetic=arith, mfu_spec=flop_rate / peak if peak else None,
                mfu_measured=flop_rate / measured[arith] if measured.get(arith) else None)


def sampler(rows, z, measured, dtypes=('bfloat16', 'float32'), batches=None):
    from collapse_jax import diffusion, parallel, plan, train
    mesh = parallel.make_mesh()
    for dtype in dtypes:
        cfg = _config(z, dtype)
        graphdef, params = train.model_graph(cfg), train.init_params(cfg)
        flops = plan.unet_flops(cfg, graphdef)
        steps = z['sample_steps']
        fn = diffusion.make_sampler(
            graphdef, diffusion.sampler_coefficients(diffusion.alphas_cumprod(cfg), steps),
            shape=(z['res'], z['res'], 3), sharding=parallel.data_sharding(mesh))
        for b in batches or z['sample_batches']:
            y = parallel.shard_batch(mesh, np.zeros((b,), np.int32))
            s, first = timed(lambda: fn(params, jax.random.key(0), y), 2)
            evals = b * steps / s
            rows.add(f'sampler {z["preset"]} {dtype} batch={b}', evals, 'evals/s',
                     img_per_s_at_1000_steps=evals / 1000, gflop_per_eval=flops / 1e9,
                     gflop_check=None if z['evals'] is None else flops / z['evals'],
                     compile_s=max(first - s, 0.0), **_mfu(rows, evals * flops, dtype, measured))


def train_steps(rows, z, measured, cases=None):
    """The train step as Engine.train runs it: fed from the host (rows gathered in NumPy and sent
    each step), from the device (D_g on the device, the batch gathered there), and from the
    device with train_scan steps a call (lax.scan)."""
    from collapse_jax import diffusion, parallel, plan, train
    mesh, per_call = parallel.make_mesh(), z['train_scan']
    for dtype, b in cases or [(d, b) for d in ('bfloat16', 'float32') for b in z['train_batches']]:
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
            flops = flops or 3 * plan.unet_flops(cfg, graphdef)  # per image, fwd + bwd
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
             compile_s=max(first - s, 0.0), of_fp32_matmul=rate / measured['float32']
             if measured.get('float32') else None)


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
            run = lambda: selection.greedy_loop(xd, n, jnp.int32(0), jnp.int32(m))  # noqa: E731
            times[name], _ = timed(run, 1)
            picks[name] = np.asarray(run())
    rows.add(f'greedy {n} of {m} d={d} int8', times['int8'], 's', float64_s=times['float64'],
             float32_s=times['float32'], picks=n,
             **{f'{k}_picks_identical': int(np.sum(picks[k] == picks['int8']))
                for k in ('float64', 'float32')})


def threshold(rows, z):
    """The threshold-decay filter at accumulate's last candidate set in DINOv2's 384
    dimensions (float32, as on a TPU; float64 elsewhere is the run's arithmetic)."""
    from collapse_jax import selection
    m, n, d = z['threshold_m'], z['threshold_n'], z['threshold_d']
    x = np.random.default_rng(2).normal(size=(m, d)).astype(np.float32)
    tau = float(np.sqrt(2 * d))  # about the median pair distance of these points
    times = []
    for _ in range(2):  # the first call compiles
        t0 = time.perf_counter()
        picks, info = selection.threshold_select(x, n, tau, 0.95, seed=0, return_info=True)
        times.append(time.perf_counter() - t0)
    rows.add(f'threshold {n} of {m} d={d} float32', times[1], 's', first_call_s=times[0],
             passes=info.get('passes'), picks=len(picks))


def peers(rows, z, smoke, python='', timeout=600):
    """The torch peers in their own process (the whole device for each framework), under
    `python` if given, for at most `timeout` seconds."""
    cmd = [python or sys.executable, '-c', 'import sys; from collapse_jax.bench.peers import device_main; '
           'device_main(sys.argv[1:])', '--out', rows.path,
           '--preset', z['preset'], '--res', str(z['res']), '--steps', str(z['sample_steps']),
           '--sample-batches', ','.join(map(str, z['sample_batches'])),
           '--train-batches', ','.join(map(str, z['train_batches'])),
           '--knn', f"{z['knn_n']},{z['knn_d']}"]
    env = dict(os.environ, COLLAPSE_JAX_BENCH_TAGS=json.dumps(rows.tags))
    try:
        p = subprocess.run(cmd + (['--smoke'] if smoke else []), capture_output=True, text=True,
                           timeout=None if math.isinf(timeout) else timeout, env=env)
    except subprocess.TimeoutExpired:
        rows.add('peers', math.nan, '', status='failed', error=f'timed out after {timeout:.0f} s')
        return
    sys.stdout.write(p.stdout)
    if p.returncode:
        rows.add('peers', math.nan, '', status='failed', error=' '.join(p.stderr.split())[-300:])


def sections(z, smoke, measured, peers_python, left):
    """[(name, estimated seconds at device sizes, run)] in order of value."""
    big, small = max(z['sample_batches']), min(z['sample_batches'])
    b0 = min(z['train_batches'])
    rest_train = [(d, b) for d in ('bfloat16', 'float32') for b in z['train_batches']
                  if (d, b) != ('bfloat16', b0)]
    return [
        ('limits', 30, lambda rows: measured.update(limits(rows, z))),
        (f'sampler bfloat16 batch={big}', 60,
         lambda rows: sampler(rows, z, measured, ('bfloat16',), (big,))),
        ('knn', 40, lambda rows: knn(rows, z, measured)),
        ('greedy', 90, lambda rows: greedy(rows, z)),
        (f'train bfloat16 batch={b0}', 150,
         lambda rows: train_steps(rows, z, measured, [('bfloat16', b0)])),
        ('threshold', 40, lambda rows: threshold(rows, z)),
        ('sampler, the rest', 120, lambda rows: [
            sampler(rows, z, measured, (d,), (b,)) for d in ('bfloat16', 'float32')
            for b in z['sample_batches'] if (d, b) != ('bfloat16', big)]),
        ('train, the rest', 300, lambda rows: train_steps(rows, z, measured, rest_train)),
        ('peers', 240, lambda rows: peers(rows, z, smoke, peers_python, max(left(), 1.0))),
    ]


def main(out, smoke=False, budget_s=420.0, peers_python=''):
    """Runs the sections that fit in `budget_s` (see the module docstring); returns this run's
    rows."""
    z, t0 = SIZES['smoke' if smoke else 'device'], time.monotonic()
    rows, measured = Rows(out), {}
    print(json.dumps(dict(rows.tags, devices=jax.device_count(), smoke=smoke,
                          budget_s=budget_s)))

    def left():
        return budget_s - (time.monotonic() - t0)
    for name, estimate, run in sections(z, smoke, measured, peers_python, left):
        estimate = 1.0 if smoke else estimate
        if estimate > left():
            rows.add(name, math.nan, '', status='skipped',
                     reason=f'{max(left(), 0.0):.0f} s of --budget_s left, estimate {estimate} s')
            continue
        try:
            run(rows)
        except Exception as e:  # noqa: BLE001 - one section's fault must not end the others
            rows.add(name, math.nan, '', status='failed',
                     error=f'{type(e).__name__}: {" ".join(str(e).split())[:300]}')
    ratios(rows, z)
    mine = [r for r in files.read_jsonl(out) if r.get('run_id') == rows.run_id]
    print(f'appended {len(mine)} rows to {out} (run {rows.run_id})')
    return mine


def ratios(rows, z):
    """Ours over the peer's speed, for each pair measured in this run (same sizes, same device)."""
    got = {r['name']: r['value'] for r in files.read_jsonl(rows.path)
           if r.get('run_id') == rows.run_id}
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

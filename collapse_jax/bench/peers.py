"""The benchmark's baselines and peers: the reference's PyTorch greedy loop, the threshold rule as
it was before its lazy updates, diffusers' UNet built like ours, and a PyTorch train step. torch
and diffusers are imported inside each function (requirements-bench.txt; never the package's)."""
from __future__ import annotations

import json
import os
from functools import partial

import jax
import jax.numpy as jnp


def torch_greedy(x, m, first=0, mode='use_mm_for_euclid_dist_if_necessary'):
    """The reference's loop: cdist to the newest pick, running minimum, argmax, .item().
    cdist's default mode uses the matmul expansion, which rounds in float32; the exact variant
    (float64 input, mode='donot_use_mm_for_euclid_dist') is the arithmetic our picks follow."""
    import torch
    picks = [first]
    min_d = torch.cdist(x, x[first:first + 1], compute_mode=mode).squeeze(1)
    for _ in range(m - 1):
        j = int(torch.argmax(min_d).item())
        picks.append(j)
        min_d = torch.minimum(min_d, torch.cdist(x, x[j:j + 1], compute_mode=mode).squeeze(1))
    return picks


@partial(jax.jit, static_argnames=('n',))
def threshold_per_visit(x, order, n, tau, decay):
    """The threshold rule as it was before the lazy updates (selection._threshold): every visit,
    accepted or not, computes the visited candidate's distance to all m candidates (jnp.where
    evaluates both branches). Kept here as the benchmark's baseline."""
    m = x.shape[0]

    def body(s):
        c = order[s['pos']]
        accept = (~s['taken'][c]) & (s['min_d'][c] > s['tau'] ** 2)
        min_d = jnp.where(accept, jnp.minimum(s['min_d'], jnp.sum((x - x[c][None]) ** 2, 1)),
                          s['min_d'])
        s = dict(s, min_d=min_d, taken=s['taken'].at[c].set(s['taken'][c] | accept),
                 picks=jnp.where(accept, s['picks'].at[s['count']].set(c), s['picks']),
                 count=s['count'] + accept.astype(jnp.int32))
        end = s['pos'] == m - 1
        return dict(s, pos=jnp.where(end, 0, s['pos'] + 1),
                    tau=jnp.where(end, s['tau'] * decay, s['tau']))

    s = dict(min_d=jnp.full((m,), jnp.inf), taken=jnp.zeros((m,), bool),
             picks=jnp.zeros((n,), jnp.int32), count=jnp.int32(0), pos=jnp.int32(0),
             tau=jnp.float32(tau))
    return jax.lax.while_loop(lambda s: s['count'] < n, body, s)['picks']


def diffusers_unet(preset, channels=3, sample_size=32):
    import diffusers
    from collapse_jax import unet
    p = unet.PRESETS[preset]
    down = ['AttnDownBlock2D' if a else 'DownBlock2D' for a in p['attention']]
    up = ['AttnUpBlock2D' if a else 'UpBlock2D' for a in reversed(p['attention'])]
    return diffusers.UNet2DModel(in_channels=channels, out_channels=channels, layers_per_block=2,
                                 block_out_channels=p['widths'], norm_num_groups=p['groups'],
                                 down_block_types=down, up_block_types=up,
                                 sample_size=sample_size)


def torch_train_step_time(preset, batch, cfg):
    import torch
    import diffusers
    from collapse_jax.bench import best_time
    model = diffusers_unet(preset).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=(cfg.train.b1, cfg.train.b2),
                            eps=cfg.train.eps, weight_decay=cfg.train.weight_decay)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear')
    x0 = torch.rand(batch, 3, 32, 32) * 2 - 1

    def one():
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        loss = torch.nn.functional.mse_loss(model(sched.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
    one()
    return best_time(lambda: [one() for _ in range(5)], 2) / 5


# ----------------------------------------------------------------------------- on the device

def _timed(fn, sync, repeats=2):
    """The fastest of `repeats` calls after a warm-up, each ended by `sync` (CUDA is async)."""
    from collapse_jax.bench import best_time

    def run():
        fn()
        sync()
    run()
    return best_time(run, repeats)


def device_main(argv=None):
    """bench --device's peers, in their own process: torch on CUDA when there is one."""
    import argparse
    import math
    from collapse_jax import files
    ap = argparse.ArgumentParser()
    for name in ('out', 'preset', 'res', 'steps', 'sample-batches', 'train-batches', 'knn'):
        ap.add_argument(f'--{name}', required=True)
    ap.add_argument('--smoke', action='store_true')
    a = ap.parse_args(argv)

    tags = json.loads(os.environ.get('COLLAPSE_JAX_BENCH_TAGS', '{}'))  # the run's id

    def add(name, value, unit, **extra):
        r = dict(name=name, value=value, unit=unit, **{**tags, **extra})
        files.append_jsonl(a.out, r)
        print(f'{name:<52} {value:>12.4g} {unit:<10} peer', flush=True)
    try:
        import torch
        import diffusers
    except ImportError as e:
        add('peers', math.nan, '', status='skipped',
            reason=f'{e.name} is not installed (requirements-bench.txt)')
        return
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    if dev == 'cpu' and not a.smoke:
        add('peers', math.nan, '', status='skipped', reason='torch sees no GPU (a CPU run '
            'would be no peer of a device row); give --peers_python a CUDA torch')
        return
    sync = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
    res, steps = int(a.res), int(a.steps)
    kind = torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear')
    for name, dtype in (('float32', torch.float32), ('bfloat16', torch.bfloat16)):
        unet = diffusers_unet(a.preset, sample_size=res).to(dev, dtype).eval()
        for b in map(int, a.sample_batches.split(',')):
            def loop():  # DDPMPipeline's loop (model, then scheduler.step), without its
                x = torch.randn(b, 3, res, res, device=dev, dtype=dtype)  # uint8 conversion
                sched.set_timesteps(steps)
                with torch.inference_mode():
                    for t in sched.timesteps:
                        x = sched.step(unet(x, t).sample, t, x).prev_sample
            add(f'peer DDPMPipeline loop {a.preset} {name} batch={b}',
                b * steps / _timed(loop, sync), 'evals/s', device=kind)
    for b in map(int, a.train_batches.split(',')):
        model = diffusers_unet(a.preset, sample_size=res).to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == 'cuda')
        x0 = torch.rand(b, 3, res, res, device=dev) * 2 - 1

        def step():
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (b,), device=dev)
            with torch.autocast(dev, dtype=torch.bfloat16):
                out = model(sched.add_noise(x0, noise, t), t).sample
            loss = torch.nn.functional.mse_loss(out.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        add(f'peer torch train step {a.preset} bf16 autocast, fused AdamW batch={b}',
            b / _timed(step, sync), 'img/s', device=kind)
    n, d = map(int, a.knn.split(','))
    x = torch.randint(0, 256, (n, d), device=dev).float()

    def knn():  # blocked |q|^2 + |r|^2 - 2 q.r, two smallest per row (the first is the point)
        sq = (x * x).sum(1)
        for i in range(0, n, 4096):
            q = x[i:i + 4096]
            (sq[i:i + 4096, None] + sq[None] - 2 * q @ x.T).topk(2, largest=False)
    s = _timed(knn, sync)
    add(f'peer torch blocked-matmul knn n={n} d={d}', 2.0 * n * n * d / s / 1e12, 'TFLOP/s',
        seconds=s, device=kind)
    try:
        import faiss
    except ImportError:
        return
    if hasattr(faiss, 'StandardGpuResources') and dev == 'cuda':
        xs = x.cpu().numpy()
        index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), d)
        index.add(xs)
        s = _timed(lambda: index.search(xs, 2), lambda: None)
        add(f'peer faiss-gpu IndexFlatL2 n={n} d={d}', 2.0 * n * n * d / s / 1e12, 'TFLOP/s',
            seconds=s, device=kind)


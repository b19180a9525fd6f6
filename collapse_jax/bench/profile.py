"""Where the UNet's time goes on this machine, by kind of op, beside diffusers' UNet2DModel:
  python -m collapse_jax.bench.profile [--cases=small:8,UNet48:4,tiny:32:16x1,tiny:128:16x1]

For each preset:batch[:SIZExCHANNELS] (images 32x3 unless given; the CPU configs run tiny on
16x16x1, training batch 32, sampling batch 128) it times one forward and one forward+backward
(the gradient of a squared output, parameters and input), the best of a few calls, and splits
the time by kind of op:
  JAX:   jax.profiler's trace of the compiled program: each XLA:CPU thunk's time, its kind read
         from the ops of the fusion it runs (a fusion with a convolution is 'convolution', else
         one with a dot 'matmul', else with an exponential 'softmax exp', else with a reduce
         'reduce', else a transpose or copy 'layout', else 'elementwise').
  torch: torch.profiler's self time of each aten op (2 threads, diffusers' UNet built like ours:
         bench.peers.diffusers_unet), sorted into the same kinds by the op's name.
Thunks can run on both cores at once, so a kind's share is of the summed op time, which can
exceed the call's wall time. torch and diffusers come from requirements-bench.txt.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from collapse_jax.bench import best_time, have

KINDS = ('convolution', 'matmul', 'softmax exp', 'reduce', 'layout', 'elementwise')


def _hlo_kinds(hlo: str) -> dict:
    """{instruction name: kind} for every instruction of a compiled module's text."""
    bodies = {}
    for block in hlo.split('\n\n'):
        head, _, body = block.strip().partition('\n')
        if head:
            bodies[head.split()[0].lstrip('%')] = body
    kinds = {}
    for m in re.finditer(r'^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$', hlo, re.M):
        called = re.search(r'calls=%?([\w.\-]+)', m.group(2))
        text = bodies.get(called.group(1), '') if called else m.group(2)
        ops = set(re.findall(r'\b(convolution|dot|exponential|reduce|transpose|copy)\(', text))
        kinds[m.group(1)] = next((k for k, op in zip(KINDS, ('convolution', 'dot', 'exponential',
                                                             'reduce')) if op in ops),
                                 'layout' if ops & {'transpose', 'copy'} else 'elementwise')
    return kinds


def jax_profile(fn, args, calls=3) -> dict:
    """{kind: ms per call} of the jitted `fn` from a profiler trace, and 'wall' (ms per call)."""
    compiled = fn.lower(*args).compile()  # compiled once: its text names the thunks it runs
    kinds = _hlo_kinds(compiled.as_text())
    jax.block_until_ready(compiled(*args))
    wall = best_time(lambda: jax.block_until_ready(compiled(*args)), calls) * 1e3
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(compiled(*args))
        events = json.load(gzip.open(glob.glob(f'{d}/**/*.trace.json.gz', recursive=True)[0]))
    out = collections.Counter()
    for e in events['traceEvents'] if isinstance(events, dict) else events:
        if e.get('ph') == 'X' and e['name'] in kinds:
            out[kinds[e['name']]] += e['dur'] / 1e3 / calls
    return dict(out, wall=wall)


TORCH_KINDS = [('convolution', r'conv'), ('matmul', r'addmm|\bmm\b|bmm|matmul|linear'),
               ('softmax exp', r'softmax|scaled_dot_product|flash|attention|exp'),
               ('reduce', r'group_norm|_norm|sum|mean|var'),
               ('layout', r'copy|contiguous|clone|cat|permute|transpose|reshape|view|upsample'
                          r'|pad|index')]


def torch_profile(model, x, t, backward, calls=3) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    def call():
        if backward:
            model.zero_grad(set_to_none=True)
            xx = x.clone().requires_grad_(True)
            (model(xx, t).sample ** 2).mean().backward()
        else:
            with torch.inference_mode():
                model(x, t)
    call()
    wall = best_time(call, calls) * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            call()
    out = collections.Counter()
    for ev in prof.key_averages():
        kind = next((k for k, pat in TORCH_KINDS if re.search(pat, ev.key.lower())),
                    'elementwise' if ev.key.startswith('aten::') else None)
        if kind:
            out[kind] += ev.self_cpu_time_total / 1e3 / calls
    return dict(out, wall=wall)


def profile_case(preset, batch, size=32, channels=3):
    from flax import nnx
    from collapse_jax import unet
    gd, params = nnx.split(unet.make_unet(preset, in_channels=channels))
    x = jax.random.normal(jax.random.key(0), (batch, size, size, channels))
    t = jnp.arange(batch) * (1000 // batch)
    fwd = jax.jit(lambda p, x: nnx.merge(gd, p)(x, t))
    grad = jax.jit(jax.grad(lambda p, x: (nnx.merge(gd, p)(x, t) ** 2).mean(), argnums=(0, 1)))
    rows = {('jax', 'forward'): jax_profile(fwd, (params, x)),
            ('jax', 'fwd+bwd'): jax_profile(grad, (params, x))}
    if have('torch') and have('diffusers'):
        import torch
        from collapse_jax.bench.peers import diffusers_unet
        torch.set_num_threads(2)
        model = diffusers_unet(preset, channels, size)
        xt = torch.randn(batch, channels, size, size)
        tt = torch.arange(batch) * (1000 // batch)
        rows[('torch', 'forward')] = torch_profile(model.eval(), xt, tt, False)
        rows[('torch', 'fwd+bwd')] = torch_profile(model.train(), xt, tt, True)
    return rows


def table(results) -> str:
    lines = ['| preset, batch, image | framework | pass | wall ms | ' + ' | '.join(KINDS) + ' |',
             '|---|---|---|---|' + '---|' * len(KINDS)]
    for (preset, batch, size, ch), rows in results.items():
        for (fw, what), r in rows.items():
            total = sum(r.get(k, 0.0) for k in KINDS) or 1.0
            cells = [f"{r.get(k, 0.0):.1f} ({100 * r.get(k, 0.0) / total:.0f}%)" for k in KINDS]
            lines.append(f"| {preset}, {batch}, {size}x{size}x{ch} | {fw} | {what} | "
                         f"{r['wall']:.1f} | " + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cases', default='small:8,UNet48:4,tiny:32:16x1,tiny:128:16x1',
                    help='comma-separated preset:batch[:SIZExCHANNELS] (default image 32x3)')
    ap.add_argument('--out', default='', help='also write the results as JSON here')
    args = ap.parse_args(argv)
    from collapse_jax import unet
    results = {}
    for case in args.cases.split(','):
        try:
            preset, batch, *image = case.split(':')
            size, ch = map(int, (image or ['32x3'])[0].split('x'))
            key = (preset, int(batch), size, ch)
        except ValueError:
            sys.exit(f'error: --cases: {case!r}; allowed: preset:batch[:SIZExCHANNELS], e.g. '
                     'tiny:32:16x1')
        if preset not in unet.PRESETS:
            sys.exit(f'error: --cases: preset {preset!r}; allowed: {", ".join(unet.PRESETS)}')
        t0 = time.perf_counter()
        results[key] = profile_case(*key)
        print(f'{case}: profiled in {time.perf_counter() - t0:.0f} s', flush=True)
    print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}; ms per call (share of the '
          'summed op time)')
    print(table(results))
    if args.out:
        from collapse_jax import files
        files.save_json(args.out, [dict(preset=p, batch=b, size=sz, channels=c, framework=fw,
                                        what=w, **r)
                                   for (p, b, sz, c), rows in results.items()
                                   for (fw, w), r in rows.items()])
    return results


if __name__ == '__main__':
    main()

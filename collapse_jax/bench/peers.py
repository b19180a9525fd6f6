"""The benchmark's baselines and peers: the reference's PyTorch greedy loop, the threshold rule as
it was before its lazy updates, diffusers' UNet built like ours, and a PyTorch train step. torch
and diffusers are imported inside each function (requirements-bench.txt; never the package's)."""
from __future__ import annotations

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


def diffusers_unet(preset, channels=3):
    import diffusers
    from collapse_jax import unet
    p = unet.PRESETS[preset]
    down = ['AttnDownBlock2D' if a else 'DownBlock2D' for a in p['attention']]
    up = ['AttnUpBlock2D' if a else 'UpBlock2D' for a in reversed(p['attention'])]
    return diffusers.UNet2DModel(in_channels=channels, out_channels=channels, layers_per_block=2,
                                 block_out_channels=p['widths'], norm_num_groups=p['groups'],
                                 down_block_types=down, up_block_types=up, sample_size=32)


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

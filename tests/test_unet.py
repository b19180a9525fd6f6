import numpy as np
import jax.numpy as jnp
import pytest
from flax import nnx

from collapse_jax import unet

# diffusers' UNet2DModel(block_out_channels=(48, 48, 96, 96, 192, 192), layers_per_block=2,
# norm_num_groups=16, attention at the fifth down / second up level, 3 channels) has 16,012,419
# parameters (counted with diffusers 0.42.1; the diffusers test below recounts when it is installed).
UNET48_DIFFUSERS_PARAMS = 16_012_419


@pytest.mark.slow
def test_unet48_parameter_count_matches_diffusers():
    model = nnx.eval_shape(lambda: unet.make_unet('UNet48', in_channels=3))
    assert unet.count_params(model) == UNET48_DIFFUSERS_PARAMS


@pytest.mark.slow
def test_forward_shapes_and_class_conditioning():
    model = unet.make_unet('tiny', in_channels=1, layers_per_block=1, num_classes=10)
    x = jnp.ones((2, 8, 8, 1))
    t = jnp.array([3, 900])
    a = model(x, t, jnp.array([1, 2]))
    b = model(x, t, jnp.array([1, 5]))
    null = model(x, t)  # no labels -> the null label
    assert a.shape == x.shape and a.dtype == jnp.float32
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)  # same label, same output
    assert float(jnp.abs(a[1] - b[1]).max()) > 1e-4  # the label changes the output
    np.testing.assert_allclose(null, model(x, t, jnp.array([10, 10])), atol=1e-6)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match='allowed: UNet32'):
        unet.make_unet('UNet99', in_channels=3)


def _diffusers_unet(widths, attention, groups, layers, channels, num_class_embeds=None):
    diffusers = pytest.importorskip('diffusers')
    down = tuple('AttnDownBlock2D' if a else 'DownBlock2D' for a in attention)
    up = tuple('AttnUpBlock2D' if a else 'UpBlock2D' for a in attention[::-1])
    return diffusers.UNet2DModel(in_channels=channels, out_channels=channels,
                                 layers_per_block=layers, block_out_channels=widths,
                                 norm_num_groups=groups, down_block_types=down,
                                 up_block_types=up, num_class_embeds=num_class_embeds)


def test_matches_diffusers_forward_with_ported_weights():
    """Builds diffusers' UNet2DModel (skipped where diffusers is not installed), ports its
    weights and compares the outputs."""
    torch = pytest.importorskip('torch')
    p = unet.PRESETS['small']
    ref = _diffusers_unet(p['widths'], p['attention'], p['groups'], 2, 3,
                          num_class_embeds=11).eval()
    ours = unet.make_unet('small', in_channels=3, num_classes=10)
    assert unet.count_params(ours) == sum(v.numel() for v in ref.parameters())
    graphdef, state = nnx.split(ours)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    params = unet.params_from_diffusers(nnx.to_pure_dict(state), sd)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    t, y = np.array([10, 700]), np.array([3, 10])
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                   class_labels=torch.from_numpy(y)).sample.numpy().transpose(0, 2, 3, 1)
    got = nnx.merge(graphdef, params)(jnp.asarray(x), jnp.asarray(t), jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4, rtol=1e-3)


def test_unet48_count_recounted_in_diffusers():
    pytest.importorskip('torch')
    p = unet.PRESETS['UNet48']
    ref = _diffusers_unet(p['widths'], p['attention'], p['groups'], 2, 3)
    assert sum(v.numel() for v in ref.parameters()) == UNET48_DIFFUSERS_PARAMS


def test_cpu_attention_matches_dot_product_attention():
    """The CPU layout of attention (unet.cpu_attention) gives dot_product_attention's values and
    gradients within float rounding: 8-wide heads over 16x16 tokens, as in the CPU presets."""
    import jax
    q, k, v = (jax.random.normal(kk, (2, 256, 4, 8)) * 3 for kk in jax.random.split(
        jax.random.key(0), 3))
    ref = jax.nn.dot_product_attention(q, k, v)
    np.testing.assert_allclose(unet.cpu_attention(q, k, v), ref,
                               atol=1e-5 * float(jnp.abs(ref).max()), rtol=0)
    loss = lambda f: lambda *a: (f(*a) * jnp.cos(jnp.arange(8.0))).sum()  # noqa: E731
    ours = jax.grad(loss(unet.cpu_attention), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=5e-5 * float(jnp.abs(b).max()), rtol=0)
    bf = [z.astype(jnp.bfloat16) for z in (q, k, v)]
    got = unet.cpu_attention(*bf)
    assert got.dtype == jnp.bfloat16
    ref = jax.nn.dot_product_attention(*bf).astype(jnp.float32)  # within one bfloat16 ulp
    np.testing.assert_allclose(got.astype(jnp.float32), ref, atol=2 ** -7 * float(jnp.abs(ref).max()))


def test_cpu_group_norm_matches_nnx_group_norm():
    """unet.GroupNorm on the CPU (cpu_group_norm: statistics per channel first) gives
    nnx.GroupNorm's values within float rounding, at the CPU presets' 2 and 4 channels a group,
    bfloat16 within one ulp; its derivatives are nnx.GroupNorm's own, bit for bit."""
    import jax
    for shape, groups in (((4, 16, 16, 16), 8), ((3, 8, 8, 32), 8), ((2, 4, 4, 96), 16)):
        m = unet.GroupNorm(shape[-1], num_groups=groups, epsilon=1e-5, rngs=nnx.Rngs(0))
        m.scale[...] = jax.random.normal(jax.random.key(1), shape[-1:]) + 1
        m.bias[...] = jax.random.normal(jax.random.key(2), shape[-1:])
        x = jax.random.normal(jax.random.key(3), shape) * 3 + 1
        ours, ref = m(x), nnx.GroupNorm.__call__(m, x)
        assert float(jnp.abs(ours - ref).max()) > 0  # cpu_group_norm ran: its sums round apart
        np.testing.assert_allclose(ours, ref, atol=1e-5 * float(jnp.abs(ref).max()), rtol=0)
        gd, st = nnx.split(m)
        w = jnp.cos(jnp.arange(np.prod(shape)).reshape(shape))
        grads = [jax.grad(lambda st, x: (call(nnx.merge(gd, st), x) * w).sum(), argnums=(0, 1))(
            st, x) for call in (unet.GroupNorm.__call__, nnx.GroupNorm.__call__)]
        for a, b in zip(*map(jax.tree.leaves, grads)):
            np.testing.assert_array_equal(a, b)
    m = unet.GroupNorm(32, num_groups=8, epsilon=1e-5, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = (jax.random.normal(jax.random.key(4), (3, 8, 8, 32)) * 3 + 1).astype(jnp.bfloat16)
    got, ref = m(x), nnx.GroupNorm.__call__(m, x)
    assert got.dtype == ref.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), ref.astype(jnp.float32),
                               atol=2 ** -7 * float(jnp.abs(ref.astype(jnp.float32)).max()))


@pytest.mark.slow
def test_unet_and_samples_unchanged_by_the_cpu_layouts(monkeypatch):
    """The 'small' UNet on the CPU (cpu_attention; cpu_group_norm in the forward pass) against
    the same UNet with dot_product_attention and nnx.GroupNorm: outputs and parameter gradients
    within 1e-5 of their scale, and a 20-step chain's uint8 samples differ by at most one level in
    at most 0.1% of pixels."""
    import jax
    from collapse_jax import diffusion
    gd, params = nnx.split(unet.make_unet('small', in_channels=1))
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 1))
    t = jnp.array([1, 300, 600, 999])
    chain = diffusion.sampler_coefficients(diffusion.linear_alphas_cumprod(1000, 1e-4, 0.02), 20)
    key, labels = jax.random.key(2), jnp.zeros((8,), jnp.int32)

    def run():
        out = jax.jit(lambda p: nnx.merge(gd, p)(x, t))(params)
        grad = jax.jit(jax.grad(lambda p: (nnx.merge(gd, p)(x, t) ** 2).mean()))(params)
        images, _ = diffusion.make_sampler(gd, chain, shape=(16, 16, 1))(params, key, labels)
        return out, grad, np.asarray(images, np.int32)

    out, grad, images = run()
    monkeypatch.setattr(unet, 'cpu_attention', jax.nn.dot_product_attention)
    monkeypatch.setattr(unet.GroupNorm, '__call__', nnx.GroupNorm.__call__)
    ref_out, ref_grad, ref_images = run()
    np.testing.assert_allclose(out, ref_out, atol=1e-5 * float(jnp.abs(ref_out).max()))
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()) + 1e-9)
    diff = np.abs(images - ref_images)
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (diff.max(), (diff > 0).mean())

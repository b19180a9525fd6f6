import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from collapse_jax import diffusion


class GaussianOracle(nnx.Module):
    """The exact E[eps | x_t] when the data are N(mu, s^2 I): a model with a known answer."""

    def __init__(self, mu, s, acp):
        self.mu = nnx.Param(jnp.asarray(mu, jnp.float32))
        self.s, self.acp = s, jnp.asarray(acp, jnp.float32)

    def __call__(self, x, t, y=None):
        a = self.acp[t][:, None, None, None]
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * self.mu) / (a * self.s ** 2 + 1 - a)


def chain_std(acp, steps, s, variance):
    """Closed form: with Gaussian data every reverse step is linear in x_t, so the variance of
    the chain's output follows v <- (c_x0 k_t + c_xt)^2 v + std^2 from v = 1."""
    c = {k: np.asarray(v, np.float64)
         for k, v in diffusion.sampler_coefficients(acp, steps, variance).items()}
    v = 1.0
    for i in range(steps):
        a = acp[int(c['t'][i])]
        k = np.sqrt(a) * s ** 2 / (a * s ** 2 + 1 - a)  # d E[x0 | x_t] / d x_t
        v = (c['c_x0'][i] * k + c['c_xt'][i]) ** 2 * v + c['std'][i] ** 2
    return np.sqrt(v)


@pytest.mark.parametrize('steps,variance', [
    pytest.param(1000, 'fixed_small', marks=pytest.mark.slow), (50, 'fixed_small'),
    (50, 'fixed_large')])
def test_sampler_with_exact_score_matches_closed_form(steps, variance):
    acp = diffusion.linear_alphas_cumprod()
    mu, s = 0.2, 0.3
    graphdef, params = nnx.split(GaussianOracle(mu, s, acp))
    sample = diffusion.make_sampler(graphdef, diffusion.sampler_coefficients(acp, steps, variance),
                                    shape=(4, 4, 1), clip_x0=False)
    imgs, finite = sample(params, jax.random.key(0), jnp.zeros(2048, jnp.int32))
    imgs = np.asarray(imgs)
    assert bool(finite.all())
    x = imgs.astype(np.float64) / 127.5 - 1
    want = chain_std(acp, steps, s, variance)
    if steps == 1000:
        assert want == pytest.approx(s, abs=0.005)  # 1000 steps recover the data distribution
    assert abs(x.mean() - mu) < 0.01
    assert abs(x.std() - want) < 0.006, (x.std(), want)


def test_respacing_and_coefficients_match_diffusers_scheduler():
    torch = pytest.importorskip('torch')
    diffusers = pytest.importorskip('diffusers')
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear',
                                    beta_start=1e-4, beta_end=0.02, clip_sample=True)
    sched.set_timesteps(50)
    c = diffusion.sampler_coefficients(diffusion.linear_alphas_cumprod(), 50)
    np.testing.assert_array_equal(np.asarray(c['t']), sched.timesteps.numpy())
    rng = np.random.default_rng(0)
    for i in (0, 17, 48, 49):
        t = int(c['t'][i])
        x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
        eps = rng.normal(size=x.shape).astype(np.float32) * 3  # large: clipping matters
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        want = sched.step(torch.from_numpy(eps), t, torch.from_numpy(x),
                          generator=torch.Generator().manual_seed(i)).prev_sample.numpy()
        x0 = np.clip((x - c['sqrt_1ma'][i] * eps) / c['sqrt_a'][i], -1, 1)
        got = c['c_x0'][i] * x0 + c['c_xt'][i] * x + c['std'][i] * z.numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_loss_of_a_zero_predictor_is_the_noise_variance():
    acp = diffusion.linear_alphas_cumprod()

    class Zero(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros(()))

        def __call__(self, x, t, y=None):
            return x * self.w

    graphdef, params = nnx.split(Zero())
    loss = diffusion.make_loss_fn(graphdef, acp)
    imgs = jnp.zeros((2048, 4, 4, 1), jnp.uint8)
    # predicting 0 for standard normal noise costs E[eps^2] = 1
    assert float(loss(params, imgs, jnp.zeros(2048, jnp.int32), jax.random.key(0))) == \
        pytest.approx(1.0, abs=0.035)  # 5 sigma of a mean of 32768 squared normals


def test_loss_of_the_exact_predictor_for_gaussian_like_data_is_its_closed_form():
    """The linear MMSE predictor of eps from x_t = sqrt(a) x0 + sqrt(1 - a) eps, for pixels of
    mean m and variance v, is sqrt(1 - a) (x_t - sqrt(a) m) / (a v + 1 - a); its expected loss at
    t is a v / (a v + 1 - a), for any law of x0 with those moments. The loss must equal that
    average over the t it drew: a wrong noising formula (a for sqrt(a), or the noise scale)
    breaks it."""
    acp = diffusion.linear_alphas_cumprod()
    rng = np.random.default_rng(0)
    imgs = np.clip(np.round(rng.normal(128, 40, (4096, 4, 4, 1))), 0, 255).astype(np.uint8)
    x0 = imgs.astype(np.float64) / 127.5 - 1
    m, v = x0.mean(), x0.var()
    seen = []

    class Exact(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(()))

        def __call__(self, x, t, y=None):
            seen.append(np.asarray(t))
            a = jnp.asarray(acp, jnp.float32)[t][:, None, None, None]
            return self.w * jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * m) / (a * v + 1 - a)

    graphdef, params = nnx.split(Exact())
    loss = diffusion.make_loss_fn(graphdef, acp)
    got = float(loss(params, jnp.asarray(imgs), jnp.zeros(4096, jnp.int32), jax.random.key(1)))
    a = np.asarray(acp, np.float64)[seen[0]]
    want = np.mean(a * v / (a * v + 1 - a))
    assert 0.1 < want < 0.9
    assert got == pytest.approx(want, abs=0.006)  # 5 sigma of the 65,536 squared residuals


def test_bad_sampler_settings_are_rejected():
    acp = diffusion.linear_alphas_cumprod()
    with pytest.raises(ValueError, match='sample.steps'):
        diffusion.sampler_coefficients(acp, 0)
    with pytest.raises(ValueError, match='sample.variance'):
        diffusion.sampler_coefficients(acp, 10, 'learned')


class ConditionalOracle(GaussianOracle):
    """Exact eps for data N(mu_y, s^2): class means mu[0..C-1], the null label's mean mu[C]."""

    def __call__(self, x, t, y=None):
        a = self.acp[t][:, None, None, None]
        m = self.mu[y][:, None, None, None]
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * m) / (a * self.s ** 2 + 1 - a)


@pytest.mark.parametrize('guidance', [1.0, 2.0])
def test_classifier_free_guidance_extrapolates_the_class_mean(guidance):
    # eps is affine in the mean with shared coefficients, so guidance w samples the Gaussian with
    # mean mu_null + w (mu_class - mu_null): the closed form this test checks.
    acp = diffusion.linear_alphas_cumprod()
    mu = np.array([0.3, -0.2, 0.0])  # classes 0, 1; null label 2
    graphdef, params = nnx.split(ConditionalOracle(mu, 0.2, acp))
    sample = diffusion.make_sampler(graphdef, diffusion.sampler_coefficients(acp, 100),
                                    shape=(2, 2, 1), clip_x0=False, guidance=guidance,
                                    num_classes=2)
    labels = jnp.arange(1024) % 2
    x = np.asarray(sample(params, jax.random.key(1), labels)[0]).astype(np.float64) / 127.5 - 1
    for c in (0, 1):
        want = mu[2] + guidance * (mu[c] - mu[2])
        assert abs(x[c::2].mean() - want) < 0.01, (c, x[c::2].mean(), want)


def test_non_finite_chains_are_flagged():
    acp = diffusion.linear_alphas_cumprod()
    graphdef, params = nnx.split(GaussianOracle(0.0, 0.3, acp))
    sample = diffusion.make_sampler(graphdef, diffusion.sampler_coefficients(acp, 10),
                                    shape=(2, 2, 1))
    params = jax.tree.map(lambda m: m * jnp.nan, params)  # a diverged model
    _, finite = sample(params, jax.random.key(0), jnp.zeros(4, jnp.int32))
    assert not bool(finite.any())

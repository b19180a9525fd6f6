"""Tests run the real code at tiny sizes on 4 faked CPU devices (data parallelism for real),
with XLA's backend optimizations turned down to keep compiles short."""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4 '
                      '--xla_backend_optimization_level=0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

assert jax.device_count() == 4, 'tests expect 4 faked CPU devices (set before jax is imported)'

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def digits_features():
    from collapse_jax import features
    return features.get('digits')


@pytest.fixture(scope='session')
def engine():
    """One compiled engine (tiny UNet, 8x8 digits) for every loop test a worker runs."""
    from collapse_jax.engine import Engine
    from helpers import tiny
    return Engine(tiny())


@pytest.fixture(scope='session')
def uninterrupted(engine, tmp_path_factory):
    """tiny replace/threshold, 2 generations, run once on 1 process x 4 devices:
    (config, records without wall times, run directory)."""
    from helpers import run_one, strip, tiny
    cfg = tiny(paradigm='replace', selection='threshold', generations=2)
    workdir = tmp_path_factory.mktemp('clean')
    return cfg, strip(run_one(cfg, str(workdir), engine)), workdir

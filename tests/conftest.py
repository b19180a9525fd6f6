"""Tests run the real code at tiny sizes on 4 faked CPU devices (data parallelism for real),
with XLA's backend optimizations turned down to keep compiles short."""
import os
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4 '
                      '--xla_backend_optimization_level=0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

assert jax.device_count() == 4, 'tests expect 4 faked CPU devices (set before jax is imported)'

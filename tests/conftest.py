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


@pytest.fixture(scope='session')
def gcs(tmp_path_factory):
    """A GCS JSON API emulator (gcp-storage-emulator, tests/gcs_emulator.py) on a free port of 127.0.0.1, with one empty
    bucket, and the environment that points every client at it: gcsfs and google-cloud-storage
    (STORAGE_EMULATOR_HOST), tensorstore, which orbax writes arrays with (TENSORSTORE_GCS_HTTP_URL).
    Yields 'gs://<bucket>'; subprocesses inherit the environment."""
    import socket
    import subprocess
    import sys
    import time
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    url = f'http://127.0.0.1:{port}'
    log = open(tmp_path_factory.mktemp('gcs') / 'emulator.log', 'w')
    emulator = os.path.join(os.path.dirname(__file__), 'gcs_emulator.py')
    proc = subprocess.Popen([sys.executable, emulator, 'start',
                             '--host=127.0.0.1', f'--port={port}', '--in-memory',
                             '--default-bucket=collapse'], stdout=log, stderr=log)
    saved = {k: os.environ.get(k) for k in GCS_ENV}
    os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false')  # no gRPC control API to ask
    for _ in range(100):
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield 'gs://collapse'
    # tensorboardX's GCS writers upload their object again when collected, even after close; at
    # interpreter exit the emulator is gone and each would retry for 2 minutes
    import gc
    from tensorboardX.record_writer import GCSRecordWriter
    for w in [o for o in gc.get_objects() if isinstance(o, GCSRecordWriter)]:
        w.flush = lambda: None
    proc.terminate()
    proc.wait(timeout=30)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


GCS_ENV = ('STORAGE_EMULATOR_HOST', 'TENSORSTORE_GCS_HTTP_URL',
           'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT')

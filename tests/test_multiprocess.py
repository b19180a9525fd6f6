"""The pod path on one machine: main.py as 2 processes x 2 CPU devices (jax.distributed through
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, gloo collectives) against the same
run as 1 process x 4 devices; and one process killed mid-run."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import strip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# main.py, with every atomic file write recorded (path per line) in $WRITES_LOG
RECORDING = '''
import os, runpy, sys
from collapse_jax import files
real = files.atomic_write
def recorded(path, write):
    with open(os.environ['WRITES_LOG'], 'a') as f:
        f.write(os.fspath(path) + '\\n')
    return real(path, write)
files.atomic_write = recorded
if os.environ.get('TRAINSETS_LOG'):  # the images each generation trains on, by hash
    import hashlib
    from collapse_jax import engine
    real_train = engine.Engine.train
    def train(self, cfg, images, *a, **k):
        with open(os.environ['TRAINSETS_LOG'], 'a') as f:
            f.write(hashlib.sha256(images.tobytes()).hexdigest() + '\\n')
        return real_train(self, cfg, images, *a, **k)
    engine.Engine.train = train
if os.environ.get('CACHE_EVENTS'):  # hits of XLA's persistent compilation cache
    import jax.monitoring
    def on_event(name, **kw):
        if name == '/jax/compilation_cache/cache_hits':
            with open(os.environ['CACHE_EVENTS'], 'a') as f:
                f.write(name + '\\n')
    jax.monitoring.register_event_listener(on_event)
if os.environ.get('JAX_PROCESS_ID') == '1' and os.environ.get('PERTURB_FEATURES'):
    from collapse_jax import features  # this process sees other features: its own selection
    real_call = features.Featurizer.__call__  # would pick other rows
    features.Featurizer.__call__ = lambda self, x: real_call(self, x)[::-1]
sys.argv = ['main.py'] + sys.argv[1:]
runpy.run_path('main.py', run_name='__main__')
'''


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(tmp_path, workdir, *overrides, tag='run', **extra_env):
    port, procs = free_port(), []
    for pid in range(2):
        env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='2',
                   XLA_FLAGS='--xla_backend_optimization_level=0',  # as conftest, minus devices
                   JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
                   JAX_PROCESS_ID=str(pid), WRITES_LOG=str(tmp_path / f'{tag}_writes{pid}'),
                   TRAINSETS_LOG=str(tmp_path / f'{tag}_trainsets{pid}'),
                   CACHE_EVENTS=str(tmp_path / f'{tag}_cache{pid}'), **extra_env)
        log = open(tmp_path / f'{tag}_log{pid}', 'w')
        procs.append(subprocess.Popen(
            [sys.executable, '-c', RECORDING, '--config=tests/tiny_config.py',
             f'--workdir={workdir}', '--config.distributed=True', *overrides],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def read(path):
    return path.read_text() if path.exists() else ''


@pytest.fixture
def reaped():
    """Processes a test starts; killed at its end, whatever happened."""
    procs = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_two_processes_match_one_process_and_only_process_zero_writes_and_selects(
        tmp_path, uninterrupted, reaped):
    cfg, want, one_dir = uninterrupted  # tiny replace/threshold, 1 process x 4 devices
    # process 1's featurizer returns its rows reversed: were it to select for itself, it would
    # train on another D_1 (and the shared losses would drift from the 1-process run)
    procs = launch(tmp_path, tmp_path / 'run', PERTURB_FEATURES='1')
    reaped += procs
    for p in procs:
        assert p.wait(timeout=600) == 0, read(tmp_path / 'run_log0')[-3000:]
    got = [json.loads(x) for x in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['generation'] for r in got] == [0, 1]
    for a, b in zip(strip(got), want):  # the 1-against-4-device test's tolerances
        assert a['final_loss'] == pytest.approx(b['final_loss'], rel=1e-5)
        assert a['train_entropy'] == pytest.approx(b['train_entropy'], rel=1e-4)
    for g in (0, 1):  # the same D_g, row for row
        for name in ('train_index.npy', 'train_source.npy'):
            np.testing.assert_array_equal(np.load(tmp_path / 'run' / f'gen_00{g}' / name),
                                          np.load(one_dir / f'gen_00{g}' / name))
    sets = [read(tmp_path / f'run_trainsets{i}').split() for i in range(2)]
    assert len(sets[0]) == 2 and sets[0] == sets[1]  # one selection for all hosts
    writes = [read(tmp_path / f'run_writes{i}').split() for i in range(2)]
    assert writes[1] == []  # process 1 wrote nothing
    assert len(writes[0]) == len(set(writes[0])) or all(  # each file once (logs rewrite)
        w.endswith(('.jsonl', '.html', '.png', 'config.json')) for w in writes[0]
        if writes[0].count(w) > 1)
    assert any(w.endswith('pool.npy') for w in writes[0])


@pytest.mark.slow
def test_a_killed_process_ends_the_other_and_both_resume(tmp_path, reaped):
    workdir = tmp_path / 'run'
    args = ('--config.train.steps=60', '--config.train.log_every=10', '--config.train.ckpt_every=10')
    procs = launch(tmp_path, workdir, *args, tag='a')
    reaped += procs
    deadline = time.time() + 900
    while 'generation 0 step 30/60' not in read(tmp_path / 'a_log0'):  # step 20 saved
        assert time.time() < deadline and procs[0].poll() is None, read(tmp_path / 'a_log0')
        time.sleep(0.5)
    procs[1].kill()
    t0 = time.time()
    rc = procs[0].wait(timeout=240)  # never hangs: the heartbeat (60 s) ends it
    log = read(tmp_path / 'a_log0')
    assert rc != 0 and time.time() - t0 < 200
    assert 'another task died' in log or 'unhealthy' in log, log[-3000:]
    # the same command on both resumes from the last checkpoint and finishes
    procs = launch(tmp_path, workdir, *args, tag='b')
    reaped += procs
    for p in procs:
        assert p.wait(timeout=600) == 0, read(tmp_path / 'b_log0')[-3000:]
    assert 'generation 0: resumed training at step' in read(tmp_path / 'b_log0')
    recs = (workdir / 'metrics.jsonl').read_text().splitlines()
    assert [json.loads(x)['generation'] for x in recs] == [0, 1]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_the_rerun_equals_an_unbroken_run(
        tmp_path, reaped):
    """A preemption notice that reaches process 1 only, during training: both processes save
    the same step and exit 0; the same command on both then ends where an unbroken 2-process
    run ends, hitting the compile cache the first launch left under the workdir."""
    import signal
    args = ('--config.train.steps=60', '--config.train.log_every=10',
            '--config.train.ckpt_every=30')
    procs = launch(tmp_path, tmp_path / 'whole', *args, tag='w')
    reaped += procs
    for p in procs:
        assert p.wait(timeout=900) == 0, read(tmp_path / 'w_log0')[-3000:]
    workdir = tmp_path / 'run'
    procs = launch(tmp_path, workdir, *args, tag='a')
    reaped += procs
    deadline = time.time() + 900
    while 'generation 0 step 10/60' not in read(tmp_path / 'a_log1'):
        assert time.time() < deadline and procs[1].poll() is None, read(tmp_path / 'a_log1')
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    t0 = time.time()
    assert [p.wait(timeout=120) for p in procs] == [0, 0], read(tmp_path / 'a_log0')[-3000:]
    assert time.time() - t0 < 60
    for i in range(2):
        assert 'stopped by SIGTERM in generation 0' in read(tmp_path / f'a_log{i}')
    saved = sorted(int(s) for s in os.listdir(workdir / 'gen_000' / 'ckpt') if s.isdigit())
    assert len(saved) == 1 and 10 < saved[0] < 60 and saved[0] % 10 == 0  # a step both logged
    procs = launch(tmp_path, workdir, *args, tag='b')
    reaped += procs
    for p in procs:
        assert p.wait(timeout=900) == 0, read(tmp_path / 'b_log0')[-3000:]
    assert f'generation 0: resumed training at step {saved[0]}' in read(tmp_path / 'b_log0')
    # the compile cache lives under the workdir (JAX writes it from process 0 only): the first
    # launch wrote it, and the second launch's process 0 hits it. (On this CPU test bed process
    # 1's cache keys differ from process 0's, so it misses; on a TPU slice every host's do not.)
    assert any(f.startswith('jit_steps-') for f in os.listdir(workdir / 'xla_cache'))
    assert 'cache_hits' in read(tmp_path / 'b_cache0')
    want, got = (strip([json.loads(x) for x in (d / 'metrics.jsonl').read_text().splitlines()])
                 for d in (tmp_path / 'whole', workdir))
    assert [r['generation'] for r in got] == [0, 1]
    for a, b in zip(got, want):
        assert a['final_loss'] == b['final_loss'] and a['train_entropy'] == b['train_entropy']
    np.testing.assert_array_equal(np.load(workdir / 'gen_001' / 'train_index.npy'),
                                  np.load(tmp_path / 'whole' / 'gen_001' / 'train_index.npy'))

"""Kill the real command (SIGKILL) at several points, rerun it, and get the uninterrupted metrics;
SIGTERM (a preemption notice) saves a checkpoint and exits cleanly. Runs main.py in
subprocesses that share a JAX compilation cache, so each restart costs seconds. The killed run
keeps its workdir on gs:// (a GCS API emulator, the `gcs` fixture) and is compared with an
unbroken run on a local disk: resume, and whole objects, on an object store."""
import os
import signal
import subprocess
import sys

import pytest
from etils import epath

from collapse_jax import files

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from helpers import TIMING  # noqa: E402
ARGS = ['--config=configs/quick_cpu.py', '--config.sweep=', '--config.loop.selection=greedy',
        '--config.data.source=digits', '--config.data.resolution=8', '--config.data.n=16',
        '--config.model.preset=tiny', '--config.model.layers_per_block=1',
        '--config.train.batch_size=8', '--config.train.steps=6', '--config.train.ckpt_every=2',
        '--config.train.log_every=2', '--config.train.warmup_steps=2', '--config.sample.steps=5',
        '--config.sample.batch_size=16', '--config.loop.generations=2', '--config.score.eval_n=32']


@pytest.fixture(scope='module')
def env(tmp_path_factory, gcs):  # gcs: the emulator's variables are in os.environ
    return dict(os.environ, JAX_PLATFORMS='cpu',
                JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp('jax_cache')),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')


def start(workdir, env):
    return subprocess.Popen([sys.executable, 'main.py', *ARGS, f'--workdir={workdir}'], cwd=ROOT,
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)


def run_until(workdir, env, marker, sig):
    """Starts the command and sends `sig` as soon as a log line contains `marker`."""
    p = start(workdir, env)
    seen = []
    for line in p.stderr:
        seen.append(line)
        if marker in line:
            if sig is not None:
                p.send_signal(sig)
            break
    rest = p.communicate(timeout=300)[1]
    return p.returncode, ''.join(seen) + rest


def metrics(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in files.read_jsonl(f'{workdir}/metrics.jsonl')]


def test_killed_and_preempted_runs_resume_to_the_uninterrupted_metrics(tmp_path, env, gcs):
    clean = start(tmp_path / 'clean', env)
    assert clean.wait(timeout=600) == 0, clean.stderr.read()
    want = metrics(tmp_path / 'clean')
    run = f'{gcs}/killed'
    events = [('generation 0 step 2/6', signal.SIGKILL),  # training; a checkpoint is being written
              ('generation 0: sampled 16/32', signal.SIGKILL),  # sampling, between two batches
              ('generation 0: {', signal.SIGKILL),  # scored; selecting and writing D_1
              ('generation 1 step 2/6', signal.SIGTERM),  # preempted: checkpoint and clean exit
              ('generation 1 step 4/6', signal.SIGKILL),  # training again after the preemption
              ('never printed', None)]  # runs to the end
    for marker, sig in events:
        rc, log = run_until(run, env, marker, sig)
        if sig == signal.SIGKILL:
            assert rc == -signal.SIGKILL, (marker, log[-2000:])
        else:
            assert rc == 0, (marker, log[-2000:])
        if sig == signal.SIGTERM:
            assert 'stopped by SIGTERM in generation 1' in log
    assert metrics(run) == want
    objects = list(epath.Path(run).glob('gen_*/*.npy'))
    assert len(objects) >= 10
    for p in objects:  # every object under its final name is whole
        files.load_npy(p, 'a partial object')
    assert not [p for pat in ('.tmp-*', '*/.tmp-*', '*/*/.tmp-*')
                for p in epath.Path(run).glob(pat)]


def test_sigterm_during_training_saves_a_checkpoint_and_exits_cleanly(tmp_path, env):
    rc, log = run_until(tmp_path, env, 'generation 0 step 2/6', signal.SIGTERM)
    assert rc == 0 and 'stopped by SIGTERM in generation 0' in log, log[-2000:]
    steps = sorted(int(d) for d in os.listdir(tmp_path / 'gen_000' / 'ckpt') if d.isdigit())
    assert steps and steps[-1] < 6  # a preemption checkpoint, not the final one
    assert not (tmp_path / 'gen_000' / 'pool.npy').exists()

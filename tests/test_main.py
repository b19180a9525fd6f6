"""The command line: bad input gets one clear line and a non-zero exit, before any work."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(tmp_path, *overrides):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    return subprocess.run([sys.executable, 'main.py', '--config=configs/quick_cpu.py',
                           f'--workdir={tmp_path}/run', *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bad_selection_is_one_line_and_nothing_is_written(tmp_path):
    p = run_main(tmp_path, '--config.sweep=replace:none,replace:best')
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith('error: loop.selection=') and "'best'" in last and 'greedy' in last
    assert 'Traceback' not in p.stderr
    assert not os.path.exists(tmp_path / 'run')  # validated before any work


@pytest.mark.slow
def test_work_projected_past_a_day_on_the_cpu_is_refused_and_a_missing_bucket_is_one_line(
        tmp_path, gcs):
    p = run_main(tmp_path, '--config.train.steps=20000000')
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode != 0 and 'Traceback' not in p.stderr
    assert last.startswith('error: this run is projected at') and 'hours on this CPU' in last
    assert '--config.force_cpu=True' in last
    assert 'backend cpu:' in p.stderr and 'compute dtype float32' in p.stderr  # the start line
    assert not os.path.exists(tmp_path / 'run' / 'config.json')
    p = subprocess.run([sys.executable, 'main.py', '--config=configs/quick_cpu.py',
                        '--workdir=gs://no-such-bucket/run'], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)  # the emulator (gcs) holds no such bucket
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode != 0 and 'Traceback' not in p.stderr, p.stderr[-2000:]
    assert last.startswith('error: gs://no-such-bucket/run/') and 'bucket exists' in last


@pytest.mark.slow
def test_compiled_programs_go_to_the_persistent_cache(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    cache = tmp_path / 'xla'
    p = subprocess.run([sys.executable, 'main.py', '--config=tests/tiny_config.py',
                        f'--workdir={tmp_path}/run', '--config.loop.generations=1',
                        f'--config.compilation_cache={cache}'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    # the train step compiles for seconds: above JAX's threshold for a cache entry (1 s)
    assert any(f.startswith('jit_steps-') for f in os.listdir(cache)), os.listdir(cache)


@pytest.mark.slow
def test_misspelled_override_is_rejected(tmp_path):
    p = run_main(tmp_path, '--config.loop.selction=greedy')
    assert p.returncode != 0 and 'Did you mean "selection"' in p.stderr
    assert 'Traceback' not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / 'run')


@pytest.mark.slow
def test_score_mode_one_line_errors_and_a_real_score(tmp_path):
    from collapse_jax import measure, scoring
    from sklearn.datasets import load_digits
    d = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    paths = {}
    for name, arr in dict(gen=d[:60], train=d[60:160], ref=d[160:400],
                          rank=d[0], f64=d[:10] / 127.5, nan=np.full((4, 8, 8), np.nan),
                          empty=np.zeros((0, 8, 8), np.uint8), i32=d[:10].astype(np.int32),
                          big=np.zeros((10, 16, 16), np.uint8), float01=d[:60] / 255.0).items():
        paths[name] = str(tmp_path / f'{name}.npy')
        np.save(paths[name], arr)
    p = subprocess.run([sys.executable, 'main.py', '--mode=score', f'--generated={paths["nan"]}',
                        f'--train={paths["train"]}'], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert p.returncode != 0 and p.stderr.strip() == 'error: --generated: 256 NaN/inf values'
    for gen, match in [('rank', r'shape \(8, 8\); allowed: \[n, h, w\]'),
                       ('f64', r'float values in \[0, 2\]; allowed: \[0, 1\]'),
                       ('empty', 'empty array'), ('i32', 'dtype int32; allowed: uint8'),
                       ('big', r'image shapes differ: --generated \(16, 16, 1\) vs --train')]:
        with pytest.raises(ValueError, match=match):
            measure.score_files(paths[gen], paths['train'], out=str(tmp_path / 'x.json'))
    with pytest.raises(FileNotFoundError, match="--train='nope.npy': no such file"):
        measure.score_files(paths['gen'], 'nope.npy')
    assert not os.path.exists(tmp_path / 'x.json')
    out = str(tmp_path / 'scores.json')
    rec = measure.score_files(paths['gen'], paths['train'], paths['ref'], out=out)
    assert json.load(open(out)) == json.loads(json.dumps(rec))
    px = d.reshape(len(d), -1).astype(np.float64)
    assert rec['train_entropy'] == pytest.approx(scoring.knn_entropy(px[60:160]), rel=1e-6)
    dist = np.sqrt(((px[:60, None] - px[None, 60:160]) ** 2).sum(-1)).min(1)
    assert rec['gs_l2'] == pytest.approx(dist.mean() / 127.5, rel=1e-5)
    assert rec['fd'] == pytest.approx(scoring.frechet_distance(px[:60], px[160:400]), rel=1e-5)
    # --reference is the held-out set of the relative copy measures
    d_ref = np.sqrt(((px[160:400, None] - px[None, 60:160]) ** 2).sum(-1)).min(1)
    diff = dist[:, None] - d_ref[None]
    assert rec['copy_auc'] == pytest.approx(np.mean((diff > 0) + 0.5 * (diff == 0)))
    assert rec['copy_share_q01'] == pytest.approx(np.mean(dist < np.quantile(d_ref, 0.01)))
    assert rec['copy_heldout'] == '--reference, n=240'
    # floats in [0, 1] are the same images
    rec2 = measure.score_files(paths['float01'], paths['train'], paths['ref'], out=out)
    assert rec2['gs_l2'] == rec['gs_l2']


@pytest.mark.slow
def test_compare_mode_draws_several_runs(tmp_path):
    from helpers import fake_run
    for p, s in [('replace', 'none'), ('accumulate', 'greedy')]:
        fake_run(str(tmp_path / f'{p}_{s}'), p, s, 0)
    runs = f'{tmp_path}/replace_none,{tmp_path}/accumulate_greedy'
    p = subprocess.run([sys.executable, 'main.py', '--mode=compare', f'--runs={runs}',
                        f'--workdir={tmp_path}/cmp'], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert p.returncode == 0, p.stderr
    page = (tmp_path / 'cmp' / 'compare.html').read_text()
    assert 'replace/none' in page and 'accumulate/greedy' in page

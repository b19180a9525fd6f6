"""The TPU compile check: the paper's config compiled for a v5e slice on this CPU, with no TPU."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def aot(tmp_path, *args):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env.pop('XLA_FLAGS', None)  # the suite's 4 faked CPU devices are not the slice's
    return subprocess.run([sys.executable, '-m', 'collapse_jax.aot', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_an_unknown_chip_is_one_line(tmp_path):
    p = aot(tmp_path, '--config=configs/cifar10_paper.py', '--topology=v9:2x2')
    assert p.returncode != 0 and 'Traceback' not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: --topology='v9:2x2'; allowed")


@pytest.mark.slow
def test_the_paper_config_compiles_for_a_v5e_slice_and_fits(tmp_path):
    path = os.environ.get('TPU_LIBRARY_PATH', '')
    if not (os.path.exists(path) or importlib.util.find_spec('libtpu')):
        pytest.skip('libtpu is not installed: pip install .[tpu], or set TPU_LIBRARY_PATH to a '
                    'libtpu.so (.ci/run installs one)')
    out = tmp_path / 'aot.json'
    p = aot(tmp_path, '--config=configs/cifar10_paper.py', '--topology=v5e:2x2',
            '--only=train,greedy',
            '--config.train.batch_size=128', f'--json={out}')
    assert p.returncode == 0, p.stderr[-3000:]
    print(p.stdout)
    res = json.loads(out.read_text())
    assert res['devices'] == 4 and res['device_kind'] == 'TPU v5 lite'
    step = res['train step']
    assert step['batch'] == 128 and step['batch_per_device'] == 32  # a quarter on each chip
    assert 0 < step['memory']['total'] < 16 * 2 ** 30 == res['hbm_per_device']
    # UNet48 at 32x32: about 1.0 GFLOP an evaluation (XLA's count of the lowered program), and a
    # training image about 3x that (forward and backward)
    assert res['flops_per_eval'] == pytest.approx(1.0e9, rel=0.05)
    assert step['flops'] == pytest.approx(3 * 128 * res['flops_per_eval'], rel=0.15)
    assert 'UNet evaluation: 1.02 GFLOP per image' in p.stdout
    # fed from the device (the default): D_g's 32,768 images (0.09 GiB) on each chip beside the
    # state, and no padded copy of them: kept as [n, h*w*c] rows, the gather needs none (as
    # [n, h, w, c], the TPU made one each step: 0.56 GiB of temporaries against 0.24)
    assert step['feed'] == 'device'
    assert step['memory']['temporary'] < 0.3 * 2 ** 30, step['memory']
    # greedy at the paper's size (32,768 picks from accumulate's 491,520 DINOv2 features), the
    # candidates split over the 4 chips: a quarter of the set on each, and no device gathers the
    # whole set (the picks' rows come by one psum of their own; x[j] on the split set used to
    # make XLA gather all of it, 0.71 GiB of temporaries)
    g = res['greedy']
    whole = g['candidates'] * g['dim'] * 4
    assert (g['candidates'], g['picks'], g['dim']) == (491520, 32768, 384)
    assert g['memory']['argument'] == pytest.approx(whole / 4, rel=0.01)
    assert g['memory']['temporary'] < 0.02 * whole

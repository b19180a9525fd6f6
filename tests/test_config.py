"""Every field of configs/default.py has a range (or a type) that a bad value is refused by, with
one line that names the field, before any work."""
import os
import re
import subprocess
import sys

import pytest

from configs import default
from collapse_jax import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One out-of-range value for every field validate() checks.
OUT_OF_RANGE = {
    'seed': -1, 'cpu_devices': -2, 'sweep': 'replace', 'compilation_cache': __file__,
    'data.source': '', 'data.split': '', 'data.data_dir': '/no/such/dir', 'data.n': 1,
    'data.resolution': 0, 'data.channels': 2, 'data.resize': 'crop',
    'model.preset': 'UNet7', 'model.layers_per_block': 0, 'model.num_classes': -1,
    'model.label_dropout': 1.0, 'model.dtype': 'float16',
    'diffusion.num_steps': 0, 'diffusion.beta_start': 0.0, 'diffusion.beta_end': 1.5,
    'train.batch_size': 0, 'train.epochs': -1, 'train.steps': -5, 'train.lr': 0.0,
    'train.b1': 1.0, 'train.b2': -0.1, 'train.eps': 0.0, 'train.weight_decay': -1e-3,
    'train.warmup_steps': -1, 'train.grad_clip': 0.0, 'train.ema_decay': 1.5,
    'train.log_every': 0, 'train.ckpt_every': 0, 'train.feed': 'disk', 'train.steps_per_call': 0,
    'sample.steps': 1001, 'sample.batch_size': 0, 'sample.variance': 'learned',
    'sample.guidance': -1.0,
    'loop.generations': 0, 'loop.paradigm': 'mix', 'loop.selection': 'best', 'loop.pool_factor': 3,
    'loop.fresh_fraction': 1.0, 'loop.feature_space': 'clip', 'loop.tau': -1.0,
    'loop.decay': 1.0,
    'score.k': 0, 'score.mem_ratio': -0.3, 'score.grid': 0, 'score.nn_pairs': 0,
    'score.feature_space': 'vgg', 'score.pr_k': 0, 'score.eval_n': -1, 'score.fd_n': -1,
    'features.digits': '/no/such.npz', 'features.inception': '/no/such.pth',
    'features.dinov2': '/no/such.pth', 'features.batch_size': 0,
}
# Fields whose only wrong values are of the wrong type: ml_collections refuses them (locked types).
TYPE_ONLY = {'distributed': 'yes', 'sample.clip_x0': 'no', 'train.ema': 1.5, 'force_cpu': 'no'}
# Out of range only together with another field.
NEEDS = {'loop.fresh_fraction': {'loop.paradigm': 'fresh'}}


def leaves(d, prefix=''):
    for k, v in d.items():
        if hasattr(v, 'items'):
            yield from leaves(v, prefix + k + '.')
        else:
            yield prefix + k


def assign(cfg, field, value):
    *sections, name = field.split('.')
    for s in sections:
        cfg = cfg[s]
    cfg[name] = value


def test_every_field_is_covered():
    assert set(leaves(default.get_config())) == set(OUT_OF_RANGE) | set(TYPE_ONLY)


@pytest.mark.parametrize('field', sorted(OUT_OF_RANGE))
def test_out_of_range_is_one_line_naming_the_field(field):
    cfg = default.get_config()
    plan.validate(cfg)  # the defaults themselves pass
    for other, value in NEEDS.get(field, {}).items():
        assign(cfg, other, value)
    assign(cfg, field, OUT_OF_RANGE[field])
    with pytest.raises(ValueError) as e:
        plan.validate(cfg)
    msg = str(e.value)
    assert '\n' not in msg and re.search(rf'(^|[^\w.]){re.escape(field)}\b', msg), msg


def test_several_steps_a_call_need_the_device_feed():
    cfg = default.get_config()
    cfg.train.update(feed='host', steps_per_call=4)
    with pytest.raises(ValueError, match="train.steps_per_call=4 needs train.feed='device'"):
        plan.validate(cfg)


@pytest.mark.parametrize('field', sorted(TYPE_ONLY))
def test_wrong_type_is_refused(field):
    with pytest.raises(TypeError):
        assign(default.get_config(), field, TYPE_ONLY[field])


def run_main(*args):
    return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_workdir_that_is_a_file_and_missing_config_are_one_line(tmp_path):
    afile = tmp_path / 'afile'
    afile.write_text('keep me')
    for args, words in (
            (['--config=configs/quick_cpu.py', f'--workdir={afile}'], 'is a file'),
            (['--config=configs/no_such.py', f'--workdir={tmp_path}/run'], 'no such file'),
            ([f'--workdir={tmp_path}/run'], '--config is required'),
            (['--config=configs/quick_cpu.py', f'--workdir={tmp_path}/run',
              '--config.score.mem_ratio=-0.5'], 'score.mem_ratio=-0.5')):
        p = run_main(*args)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and words in lines[0], p.stderr
    assert afile.read_text() == 'keep me' and not (tmp_path / 'run').exists()

"""The command line: bad input gets one clear line and a non-zero exit, before any work."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(tmp_path, *overrides):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    return subprocess.run([sys.executable, 'main.py', '--config=configs/quick_cpu.py',
                           f'--workdir={tmp_path}/run', *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bad_selection_is_one_line_and_nothing_is_written(tmp_path):
    p = run_main(tmp_path, '--config.sweep=replace:none,replace:best')
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith('error: loop.selection=') and "'best'" in last and 'greedy' in last
    assert 'Traceback' not in p.stderr
    assert not os.path.exists(tmp_path / 'run')  # validated before any work


def test_misspelled_override_is_rejected(tmp_path):
    p = run_main(tmp_path, '--config.loop.selction=greedy')
    assert p.returncode != 0 and 'Did you mean "selection"' in p.stderr
    assert 'Traceback' not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / 'run')

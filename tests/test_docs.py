"""The documentation as a user meets it: every relative link resolves, every command it gives
parses (run with --dry_run, or --help), and every record key is described."""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ['README.md'] + [os.path.join('docs', f) for f in sorted(os.listdir(
    os.path.join(ROOT, 'docs'))) if f.endswith('.md')]


def text(path):
    return open(os.path.join(ROOT, path), encoding='utf-8').read()


@pytest.mark.parametrize('doc', DOCS)
def test_every_relative_link_resolves(doc):
    links = re.findall(r'\]\(([^)\s]+)\)', text(doc))
    for link in links:
        if re.match(r'[a-z]+://', link) or link.startswith('#'):
            continue
        path = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), link.split('#')[0]))
        assert os.path.exists(path), f'{doc}: {link} -> {path} does not exist'


def commands():
    """(doc, argv) of every `python main.py` and `python -m collapse_jax` command in a code block,
    continuation lines joined; optional [..] parts and placeholder flags (...) dropped."""
    out = []
    for doc in DOCS:
        for block in re.findall(r'```(?:bash)?\n(.*?)```', text(doc), re.S):
            for line in block.replace('\\\n', ' ').splitlines():
                line = line.split('  #')[0].split('&&')[-1].strip()
                if not line.startswith(('python main.py', 'python -m collapse_jax')):
                    continue
                line = re.sub(r'\[[^\]]*\]', '', line)
                argv = [a for a in shlex.split(line)[1:]
                        if '...' not in a and '…' not in a and '|' not in a]
                out.append((doc, argv))
    return out


PARSE = ('import importlib, sys; m = importlib.import_module(sys.argv[1]); '
         "m.parser().parse_args(sys.argv[2:]) if hasattr(m, 'parser') else "
         "m.FLAGS(['prog'] + sys.argv[2:]); print('parsed')")


@pytest.mark.slow
def test_every_command_in_the_docs_parses(tmp_path):
    """run, study, calibrate and entropy commands run with --dry_run; the other absl entries
    have every flag and config override parsed by their own flag parser (absl's --help would not
    check them); the plain-argv entries answer --help."""
    cmds = commands()
    assert len(cmds) >= 12
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
    for doc, argv in cmds:
        argv = [f'--workdir={tmp_path / "w"}' if a.startswith('--workdir=') else a for a in argv]
        mode = next((a.split('=')[1] for a in argv if a.startswith('--mode=')), 'run')
        module = 'main' if argv[0] == 'main.py' else argv[1]
        args = argv[1:] if argv[0] == 'main.py' else argv[2:]
        if module == 'main' and mode in ('run', 'study', 'calibrate', 'entropy'):
            cmd, want = ['main.py'] + args + ['--dry_run'], 'nothing was written (--dry_run)'
        elif module in ('main', 'collapse_jax.aot', 'collapse_jax.bench'):
            cmd, want = ['-c', PARSE, module] + args, 'parsed'
        else:
            cmd, want = ['-m', module, '--help'], 'usage'
        res = subprocess.run([sys.executable] + cmd, cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0 and want in res.stdout, \
            f'{doc}: {" ".join(argv)}\n{res.stdout[-1000:]}\n{res.stderr[-2000:]}'
    assert not os.path.exists(tmp_path / 'w')  # a dry run writes nothing


def test_every_record_key_is_described():
    from collapse_jax import metrics
    doc = text('docs/measures.md')
    missing = [k for k in metrics.BY_KEY if f'`{k}`' not in doc]
    assert not missing, missing

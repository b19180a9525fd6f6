"""Reports: the self-contained HTML page (rendered in headless Chromium where installed), the
cross-run comparison, the PCA projection and the entropy / log GS correlation."""
import os
import shutil
import subprocess

import numpy as np
import pytest

from collapse_jax import files, layout, report
from helpers import fake_run

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


def write_report(workdir):
    rd = layout.RunDir(workdir)
    return report.write_report(rd, rd.records(), files.read_json(rd.config))


def test_report_is_self_contained_with_every_section(tmp_path):
    recs = fake_run(str(tmp_path), 'replace', 'greedy', 0)
    page = open(write_report(tmp_path)).read()
    assert page.count('src="data:image/png;base64,') == 3 * 3 + 2  # all inlined
    assert 'src="http' not in page and 'href="http' not in page  # nothing fetched
    for text in ('Generation 2', 'Metrics', 'Pearson r', '<b>digits</b>', '&quot;loop&quot;'):
        assert text in page, text
    pts, r = report.entropy_vs_gs(recs)
    want = np.corrcoef([x['train_entropy'] for x in recs], [np.log(x['gs_mse']) for x in recs])
    assert r == pytest.approx(want[0, 1]) and f'pixels {r:.3f}' in page


@pytest.mark.slow
def test_compare_draws_runs_on_shared_axes(tmp_path):
    runs = {}
    for i, (p, s) in enumerate([('replace', 'none'), ('replace', 'greedy'), ('accumulate', 'none')]):
        fake_run(str(tmp_path / f'{p}_{s}'), p, s, i)
        runs[f'{p}/{s}'] = str(tmp_path / f'{p}_{s}')
    page = open(report.write_compare(layout.SweepDir(tmp_path / 'cmp'), runs)).read()
    assert os.path.getsize(tmp_path / 'cmp' / 'compare.png') > 0
    assert all(label in page for label in runs) and page.count('<tr>') == 1 + 3
    with pytest.raises(FileNotFoundError, match='no metrics.jsonl'):
        report.write_compare(layout.SweepDir(tmp_path / 'cmp'), {'x': str(tmp_path / 'missing')})


def test_projection_uses_the_real_principal_axes():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 16))
    real = np.clip(127.5 + 60 * rng.normal(size=(200, 1)) * base / np.linalg.norm(base), 0, 255)
    mu, axes = report.pca_axes(real.astype(np.uint8).reshape(200, 4, 4, 1))
    cos = abs(axes[0] @ base[0]) / np.linalg.norm(base)
    assert axes.shape == (2, 16) and cos > 0.99


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason='needs Debian chromium (apt-get install chromium)')
def test_report_renders_in_headless_chromium(tmp_path):
    fake_run(str(tmp_path), 'replace', 'threshold', 3)
    page = write_report(tmp_path)
    flags = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
             '--disable-background-networking', '--disable-component-update', '--disable-sync',
             f'--user-data-dir={tmp_path / "profile"}', '--virtual-time-budget=3000']
    dom = subprocess.run(flags + ['--dump-dom', f'file://{page}'], capture_output=True,
                         text=True, timeout=120).stdout
    assert 'data-images-loaded="11/11"' in dom  # the page's script saw every image decode
    shot = tmp_path / 'shot.png'
    subprocess.run(flags + [f'--screenshot={shot}', '--window-size=1200,1600', f'file://{page}'],
                   capture_output=True, timeout=120)
    from PIL import Image
    img = np.asarray(Image.open(shot).convert('L'))
    assert img.shape == (1600, 1200) and img.std() > 10  # not a blank page

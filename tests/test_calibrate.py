"""The generation-0 phase diagram: one real toy run through the command, and the rule that names
the headline regime."""
import json
import os

import ml_collections
import pytest

from collapse_jax import calibrate, plan
from helpers import tiny


def toy_cfg(ns='16,64', steps='2,4'):
    cfg = tiny(generations=1)
    cfg.calibrate = ml_collections.ConfigDict(dict(ns=ns, steps=steps, generalize_z=3.0,
                                                   generalize_mem=0.1, copy_z=-5.0))
    return cfg


@pytest.mark.slow
def test_calibration_measures_every_cell_resumes_and_draws(tmp_path, engine):
    res = calibrate.run_calibration(toy_cfg(), str(tmp_path), engine)
    cells = {(r['n'], r['steps']): r for r in res['cells']}
    assert sorted(cells) == [(16, 2), (16, 4), (64, 2), (64, 4)]
    for r in cells.values():
        assert r['n_samples'] == 32 and r['copy_heldout'] == 'held-out real'
        assert (r['copy_auc'] - 0.5) * r['copy_z'] >= 0  # one statistic, two scales
        for key in calibrate.KEYS:
            assert r[key] is not None, key
    assert os.path.getsize(tmp_path / 'figures' / 'phase.png') > 0
    assert os.path.getsize(tmp_path / 'N64' / 'cells' / 'steps4_nearest.png') > 0
    before = (tmp_path / 'N16' / 'cells' / 'steps2.json').read_text()
    again = calibrate.run_calibration(toy_cfg(), str(tmp_path), engine)  # nothing left to do
    assert again['cells'] == json.loads(json.dumps(res['cells']))
    assert (tmp_path / 'N16' / 'cells' / 'steps2.json').read_text() == before


def cell(n, steps, z, mem, rec=0.9):
    return dict(n=n, steps=steps, copy_z=z, memorization=mem, recognizable=rec,
                recognizable_real=0.95)


def test_headline_is_the_smallest_generalizing_n_whose_quarter_copies():
    c = toy_cfg().calibrate
    cells = [cell(64, 1000, -15.0, 0.9), cell(256, 1000, -1.0, 0.02),
             cell(1024, 1000, 0.5, 0.0), cell(64, 2000, -18.0, 0.95),
             cell(256, 2000, -6.0, 0.3), cell(1024, 2000, 0.1, 0.0)]
    h = calibrate.headline(cells, c)
    assert (h['n'], h['steps'], h['copying_n']) == (256, 1000, 64)
    blurry = [dict(x, recognizable=0.1) if x['n'] == 256 else x for x in cells]
    assert calibrate.headline(blurry, c)['n'] == 1024  # blurred samples do not generalize
    assert calibrate.headline([cell(256, 1000, -1.0, 0.0), cell(64, 1000, -1.0, 0.0)], c) is None


def test_bad_calibrate_section_is_one_line():
    cfg = toy_cfg(ns='64,abc')
    with pytest.raises(ValueError, match="calibrate.ns='64,abc'; allowed: integers >= 1"):
        plan.calibrate_plan(cfg)

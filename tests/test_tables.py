"""Tables made from results.json, and the documents that hold them."""
import os

import pytest

from collapse_jax import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def results():
    rows = [dict(n=16, seed=s, variant=v, generation=g, train_entropy=100.0 + g + s,
                 copy_auc=0.3 + 0.01 * g, copy_auc_lo=0.25, copy_auc_hi=0.35, copy_z=0.0 - 2.0 * g,
                 copy_share_q05=0.1, copy_share_q05_lo=0.05, copy_share_q05_hi=0.15,
                 copy_share_q01=None, copy_heldout_n=64)
            for v in ('replace/none', 'replace/greedy') for s in (0, 1) for g in range(3)]
    return dict(headline_n=16, baseline='replace/none', rows=rows + [dict(rows[0], n=24)])


def test_a_variant_table_holds_each_seeds_value_and_says_what_is_missing():
    text = tables.variant_table(results(), 'replace/greedy', 'relative')
    lines = text.splitlines()
    assert lines[0] == 'replace/greedy, N = 16, seeds 0 / 1'
    assert lines[4] == ('| 0 | 0.300 [0.250, 0.350] / 0.300 [0.250, 0.350] | 0.100 [0.050, 0.150] '
                        '/ 0.100 [0.050, 0.150] | n/a / n/a | +0.0 / +0.0 | 64 / 64 |')
    assert lines[6].startswith('| 2 | 0.320 [') and '| \u22124.0 / \u22124.0 |' in lines[6]
    assert len(lines) == 7  # N = 24's row is not at the headline N
    absolute = tables.variant_table(results(), 'replace/none', 'absolute').splitlines()
    assert absolute[5].startswith('| 1 | 101 / 102 | n/a / n/a |')
    with pytest.raises(ValueError, match="columns='nope'; allowed: absolute"):
        tables.variant_table(results(), 'replace/none', 'nope')


def test_the_entropy_table_has_a_row_per_parent_count_in_the_plans_order():
    rows = [dict(n=256, parents=k, seed=s, train_entropy=500.0 + k + s, copy_auc=0.4,
                 copy_auc_lo=0.3, copy_auc_hi=0.5, memorization_calibrated=0.2,
                 memorization_calibrated_null=0.25)
            for s in (0, 1) for k in (8, 32, 0) if (k, s) != (32, 1)]
    lines = tables.variant_table(dict(rows=rows), 'entropy', 'entropy').splitlines()
    assert lines[0] == '--mode=entropy, N = 256, seeds 0 / 1'
    assert [line.split(' | ')[0] for line in lines[4:]] == ['| 8', '| 32', '| real']
    assert lines[4].startswith('| 8 | 508 / 509 | 0.400 [0.300, 0.500] / 0.400 [0.300, 0.500] | '
                               'n/a / n/a | 0.200 (0.250) / 0.200 (0.250) |')
    assert lines[5].startswith('| 32 | 532 / n/a |')  # seed 1's K = 32 not measured


def test_auc_from_z_inverts_the_normal_approximation():
    from collapse_jax import scoring
    import numpy as np
    rng = np.random.default_rng(0)
    a, b = rng.gamma(2.0, size=300), rng.gamma(2.2, size=120)
    s = scoring.copy_statistics(a, b, reps=0)
    assert tables.auc_from_z(s['copy_z'], 300, 120) == pytest.approx(s['copy_auc'], abs=1e-9)


def test_blocks_are_regenerated_and_the_docs_are_current(tmp_path, monkeypatch):
    from collapse_jax import files
    files.save_json(str(tmp_path / 'r.json'), results())
    doc = tmp_path / 'doc.md'
    doc.write_text('before\n<!-- table r.json replace/none from_z m=3 n0=3 n=3 -->\nold\n'
                   '<!-- end table -->\nafter\n')
    monkeypatch.chdir(tmp_path)
    assert tables.main(['--check', 'doc.md']) == 1
    assert tables.main(['doc.md']) == 0 and tables.main(['--check', 'doc.md']) == 0
    text = doc.read_text()
    assert text.startswith('before\n<!-- table') and text.endswith('<!-- end table -->\nafter\n')
    assert 'old' not in text and '| 2 | 102 / 103 |' in text
    monkeypatch.chdir(ROOT)  # every generated table in the docs equals its results.json
    assert tables.main(['--check', 'docs/RESULTS.md']) == 0


def test_a_block_without_its_end_line_is_an_error_not_a_swallow(tmp_path):
    import json
    res = tmp_path / 'r.json'
    rows = [dict(n=256, parents=8, seed=0, train_entropy=1.0, copy_auc=0.4, copy_auc_lo=0.3,
                 copy_auc_hi=0.5)]
    res.write_text(json.dumps(dict(rows=rows)))
    doc = tmp_path / 'doc.md'
    text = (f'<!-- table {res} entropy entropy -->\n<!-- /table -->\nprose that must stay\n'
            f'<!-- table {res} entropy entropy -->\nold\n<!-- end table -->\n')
    doc.write_text(text)
    assert tables.main([str(doc)]) == 2
    assert doc.read_text() == text  # nothing rewritten
    doc.write_text(text.replace('<!-- /table -->', '<!-- end table -->'))
    assert tables.main([str(doc)]) == 0
    out = doc.read_text()
    assert 'prose that must stay' in out and out.count('| 8 | 1 |') == 2 and 'old' not in out

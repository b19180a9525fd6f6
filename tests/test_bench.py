"""The benchmark entry at toy sizes: it runs, writes one JSON object per measurement, and its
greedy peer (the reference's PyTorch loop, where torch is installed) picks what ours picks."""
import json

import numpy as np
import pytest

from collapse_jax import bench, greedy_select


def test_bench_writes_a_record_per_measurement(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.SIZES, 'quick', dict(bench.SIZES['quick'], knn_n=300, greedy_n=200,
                                                   greedy_m=60, d=48, roofline=256, peer_picks=60))
    out = tmp_path / 'bench.jsonl'
    rows = bench.main(['--quick', '--only=roofline,knn,greedy', f'--out={out}'])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == json.loads(json.dumps(rows)) and len(lines) >= 3
    assert all({'name', 'value', 'unit'} <= set(r) for r in lines)
    knn = [r for r in lines if r['name'].startswith('knn entropy')]
    for r in knn:
        if 'peer' in r:  # the peers' KL entropy agrees with ours
            assert r['entropy_abs_diff'] < 1e-3 * abs(r['entropy'])
    greedy = [r for r in lines if r['name'].startswith('greedy')][0]
    if 'peer' in greedy:
        assert greedy['picks_identical_to_exact_loop'] == greedy['picks_compared'] == 60


def test_bench_rejects_unknown_parts():
    with pytest.raises(SystemExit, match="unknown \\['gpu'\\]"):
        bench.main(['--only=knn,gpu'])


def test_reference_torch_loop_equals_ours():
    torch = pytest.importorskip('torch')
    x = np.random.default_rng(0).integers(0, 256, (300, 30)).astype(np.float32)
    assert bench.torch_greedy(torch.from_numpy(x), 80, first=3) == greedy_select(
        x, 80, first=3).tolist()

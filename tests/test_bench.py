"""The benchmark entry at toy sizes: it runs, writes one JSON object per measurement, and its
greedy peer (the reference's PyTorch loop, where torch is installed) picks what ours picks."""
import json

import jax

import numpy as np
import pytest

from collapse_jax import bench, greedy_select


@pytest.mark.slow
def test_bench_writes_a_record_per_measurement(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.SIZES, 'quick', dict(bench.SIZES['quick'], knn_n=300, greedy_n=200,
                                                   greedy_m=60, d=48, roofline=256, peer_picks=60,
                                                   threshold_n=60, threshold_d=16))
    out = tmp_path / 'bench.jsonl'
    rows = bench.main(['--quick', '--only=roofline,knn,greedy,threshold', f'--out={out}'])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == json.loads(json.dumps(rows)) and len(lines) >= 3
    assert all({'name', 'value', 'unit'} <= set(r) for r in lines)
    knn = [r for r in lines if r['name'].startswith('knn entropy')]
    for r in knn:
        if 'peer' in r:  # the peers' KL entropy agrees with ours
            assert r['entropy_abs_diff'] < 1e-3 * abs(r['entropy'])
    # the project's own rows, peers or not: real timings, and the entropy of the benchmark's data
    x = np.random.default_rng(0).integers(0, 256, (300, 48), dtype=np.uint8).astype(np.float32)
    from collapse_jax import knn_entropy
    assert knn and all(r['entropy'] == pytest.approx(knn_entropy(x), rel=1e-9) for r in knn)
    greedy = [r for r in lines if r['name'].startswith('greedy')][0]
    assert greedy['name'] == 'greedy select 60 of 200 d=48' and greedy['unit'] == 's'
    thr = [r for r in lines if r['name'].startswith('threshold')][0]  # the lazy rule, same picks
    assert thr['name'] == 'threshold select 60 of 300 d=16' and thr['passes'] > 1
    assert thr['picks_identical'] == thr['picks_compared'] == 60
    for r in (greedy, thr):  # the integer path, and float64 on the same pixels: the same picks
        assert r['arithmetic'].startswith('int8') and r['float64_picks_identical'] == 60
    roof = [r for r in lines if r['name'].startswith('matmul')]
    assert roof and all(r['value'] > 0 and r['unit'] == 'GFLOP/s' for r in roof)
    assert all(r['value'] > 0 and r.get('compile_s', 0) >= 0 for r in lines)
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


def test_projects_the_paper_scale_study_from_measured_rates():
    from collapse_jax import plan
    from configs import study_cifar10
    rows = [dict(name='train step UNet48 32x32x3 batch=8', value=50.0),
            dict(name='train step UNet48 32x32x3 batch=128', value=200.0),
            dict(name='train step small 32x32x3 batch=128', value=9e9),  # not UNet48: unused
            dict(name='sampler UNet48 32x32x3 steps=20 batch=4', value=3.0, unet_evals_per_s=60.0)]
    assert bench.project_study(rows[:1] + rows[2:3]) is None  # no UNet48 sampler rate
    r = bench.project_study(rows)
    c = plan.study_cost(study_cifar10.get_config())
    assert r['unit'] == 'hours' and r['train_images'] == c['train_images'] == 2_818_048_000
    assert r['value'] == pytest.approx((c['train_images'] / 200 + c['unet_evals'] / 60) / 3600)


@pytest.mark.slow
def test_device_bench_smoke_runs_every_row_and_writes_each_as_it_goes(tmp_path):
    """The accelerator benchmark's own code at toy sizes on the CPU (4 faked devices): every
    section in order of value, measured values, the greedy arithmetic compared, the peers'
    process reached; every row tagged with the run and the versions; a second run appends."""
    out = tmp_path / 'device.jsonl'
    rows = bench.main(['--device', '--smoke', f'--out={out}'])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r['name'] for r in lines] == [r['name'] for r in rows]
    names = [r['name'] for r in lines]
    assert names[:5] == ['matmul 256^3 bfloat16', 'matmul 256^3 tf32', 'matmul 256^3 float32',
                         'memory bandwidth (4 MiB read + written)',
                         'sampler tiny bfloat16 batch=4']
    assert names[5].startswith('knn') and names[6].startswith('greedy')
    assert [n for n in names if n.startswith('train step')] == [
        f'train step tiny {d} batch=4 fed from {f}' for d in ('bfloat16', 'float32')
        for f in ('host', 'device', 'device, 2 steps a call')]
    assert len([n for n in names if n.startswith('sampler tiny')]) == 2
    assert any(n.startswith('threshold 64 of 320') for n in names)
    ours = [r for r in lines if not r['name'].startswith('peer')]
    for r in ours:  # measured, and MFU against the measured matmul in (0, 1.5)
        assert np.isfinite(r['value']) and r['value'] > 0 and 'status' not in r, r
        if r.get('mfu_measured') is not None:
            assert 0 < r['mfu_measured'] < 1.5, r
            assert r['arithmetic'] == ('bfloat16' if 'bfloat16' in r['name'] else 'float32')
    assert len({r['run_id'] for r in lines}) == 1
    assert all(r['jax'] == jax.__version__ and r['jaxlib'] for r in lines)
    g = next(r for r in lines if r['name'].startswith('greedy'))
    # the exact integer path; float64 and, at d = 64, float32 are exact too: the same picks
    assert g['float64_picks_identical'] == g['float32_picks_identical'] == g['picks'] == 64
    peers = [r for r in lines if r['name'].startswith('peer')]
    assert peers and (peers[0]['name'] != 'peers' or 'not installed' in peers[0]['reason'])
    again = bench.main(['--device', '--smoke', f'--out={out}', '--budget_s=1'])
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert kept[:len(lines)] == lines and kept[len(lines):] == again  # appended, never deleted


@pytest.mark.slow
def test_device_bench_survives_a_raising_section_and_skips_what_the_budget_cannot_hold(
        tmp_path, monkeypatch):
    from collapse_jax.bench import device
    out = tmp_path / 'device.jsonl'
    rows = bench.main(['--device', '--smoke', f'--out={out}', '--budget_s=1'])
    assert rows and all(r['status'] == 'skipped' and np.isnan(r['value']) for r in rows)
    assert rows[0]['name'] == 'limits' and 'of --budget_s left' in rows[0]['reason']

    def boom(*a, **k):
        raise RuntimeError('CUDA_ERROR_OUT_OF_MEMORY\nat line 2')
    ran = []  # the UNet sections are the smoke test's; here they only say that they ran
    monkeypatch.setattr(device, 'knn', boom)
    for name in ('sampler', 'train_steps', 'peers'):
        monkeypatch.setattr(device, name, lambda *a, name=name, **k: ran.append(name))
    rows = bench.main(['--device', '--smoke', f'--out={tmp_path / "b.jsonl"}'])
    failed = [r for r in rows if r.get('status') == 'failed']
    assert [r['name'] for r in failed] == ['knn']
    assert failed[0]['error'] == 'RuntimeError: CUDA_ERROR_OUT_OF_MEMORY at line 2'
    after = [r['name'] for r in rows[rows.index(failed[0]) + 1:]]
    assert after[0].startswith('greedy') and after[1].startswith('threshold')
    assert ran == ['sampler', 'train_steps', 'sampler', 'train_steps', 'peers']  # all ran


def test_device_sizes_refuse_a_cpu_backend():
    with pytest.raises(SystemExit, match="JAX's backend is 'cpu'"):
        bench.main(['--device'])


def test_mfu_is_taken_against_the_arithmetic_used():
    from collapse_jax.bench import device
    assert device.arithmetic('bfloat16', 'gpu') == 'bfloat16'
    assert device.arithmetic('float32', 'gpu') == 'tf32'
    assert device.arithmetic('float32', 'tpu') == 'bfloat16'
    assert device.arithmetic('float32', 'cpu') == 'float32'
    for kind in ('NVIDIA H100 80GB HBM3', 'NVIDIA H100 PCIe', 'NVIDIA H200', 'NVIDIA L4',
                 'NVIDIA A100-SXM4-80GB', 'TPU v4', 'TPU v5 lite', 'TPU v5', 'TPU v6 lite'):
        spec = device.SPEC[kind]
        assert spec['bfloat16'] > spec.get('tf32', 0) > spec.get('float32', -1) or \
            kind.startswith('TPU'), kind


def test_profile_sorts_thunk_time_by_kind_of_op():
    """bench.profile reads a real profiler trace: a program that is one big convolution spends
    nearly all its op time in 'convolution'; a matmul and an exp of the input show as 'matmul'
    and 'softmax exp' (an exp of the product would be one fusion with it: a fusion takes the kind
    of its heaviest op); the wall time is measured."""
    from collapse_jax.bench import profile
    x = jax.random.normal(jax.random.key(0), (8, 64, 64, 32))
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 64))
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    r = profile.jax_profile(conv, (x, w))
    total = sum(r.get(k, 0.0) for k in profile.KINDS)
    assert r['wall'] > 0 and r.get('convolution', 0.0) > 0.8 * total > 0, r
    a = jax.random.normal(jax.random.key(2), (1024, 1024))
    r = profile.jax_profile(jax.jit(lambda a: (a @ a, jax.numpy.exp(a).sum(0))), (a,))
    assert r.get('matmul', 0.0) > 0 and r.get('softmax exp', 0.0) > 0, r
    assert r.get('convolution', 0.0) == 0.0

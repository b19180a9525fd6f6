"""Feature networks against straightforward numpy computations of the same networks, on
checkpoints the tests write in the PyTorch layout; the digits classifier's fixed weights, pinned
features and real accuracy."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.special import erf

from collapse_jax import features as F
from flax import nnx
import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torch_layout_shapes(model):
    """{PyTorch name: shape} for every variable of an NNX port."""
    out = {}

    def visit(path, v):
        names = F.path_names(path)
        shape = v.shape
        if names[-1] == 'kernel':
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
        out['.'.join(names[:-1] + [F._LEAF.get(names[-1], names[-1])])] = shape

    jax.tree_util.tree_map_with_path(visit, nnx.state(model))
    return out


def _random_checkpoint(shapes, seed):
    """He-scaled weights and plausible batch-norm statistics, so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for k, s in shapes.items():
        if k.endswith('running_var'):
            sd[k] = rng.uniform(0.5, 1.5, s)
        elif k.endswith(('running_mean', 'bias')):
            sd[k] = rng.normal(0, 0.1, s)
        elif k.endswith('gamma'):
            sd[k] = rng.uniform(0.5, 1.5, s)
        elif len(s) >= 2 and k.endswith('weight'):
            sd[k] = rng.normal(0, np.sqrt(2.0 / np.prod(s[1:])), s)
        elif k.endswith('weight'):  # norm scales
            sd[k] = rng.uniform(0.5, 1.5, s)
        else:  # cls_token, pos_embed
            sd[k] = rng.normal(0, 0.5, s)
    return {k: v.astype(np.float32) for k, v in sd.items()}


# ------------------------------------------------------------------ numpy reference networks

def np_conv(x, w, stride=1, pad=(0, 0), bias=None):
    """x [b, h, w, c] NHWC, w [o, i, kh, kw] (PyTorch)."""
    x = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(1, 2))
    y = np.tensordot(win[:, ::stride, ::stride], w, axes=([3, 4, 5], [1, 2, 3]))
    return y if bias is None else y + bias


def np_pool(x, size, stride, pad, op):
    if op == 'max':
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
        return np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))[
            :, ::stride, ::stride].max(axis=(-1, -2))
    ones = np.pad(np.ones_like(x[:1, ..., :1]), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    s = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2)).sum((-1, -2))
    n = np.lib.stride_tricks.sliding_window_view(ones, (size, size), axis=(1, 2)).sum((-1, -2))
    return (s / n)[:, ::stride, ::stride]  # count_include_pad=False


def np_resize_bilinear(x, size):
    """F.interpolate(mode='bilinear', align_corners=False) in numpy."""
    def taps(n_in):
        s = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0)
        i0 = np.minimum(np.floor(s).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), s - i0
    i0, i1, ly = taps(x.shape[1])
    j0, j1, lx = taps(x.shape[2])
    rows = x[:, i0] * (1 - ly)[None, :, None, None] + x[:, i1] * ly[None, :, None, None]
    return rows[:, :, j0] * (1 - lx)[None, None, :, None] + rows[:, :, j1] * lx[None, None, :, None]


def np_inception(sd, images):
    def bc(name, x, stride=1, pad=(0, 0)):
        y = np_conv(x, sd[name + '.conv.weight'], stride, pad)
        y = (y - sd[name + '.bn.running_mean']) / np.sqrt(sd[name + '.bn.running_var'] + 1e-3)
        return np.maximum(y * sd[name + '.bn.weight'] + sd[name + '.bn.bias'], 0)

    x = np_resize_bilinear(np.repeat(images / 127.5 - 1.0, 3, -1), 299)
    x = bc('Conv2d_2b_3x3', bc('Conv2d_2a_3x3', bc('Conv2d_1a_3x3', x, 2)), pad=(1, 1))
    x = np_pool(bc('Conv2d_4a_3x3', bc('Conv2d_3b_1x1', np_pool(x, 3, 2, 0, 'max'))), 3, 2, 0, 'max')
    for m in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d'):
        x = np.concatenate([
            bc(m + '.branch1x1', x),
            bc(m + '.branch5x5_2', bc(m + '.branch5x5_1', x), pad=(2, 2)),
            bc(m + '.branch3x3dbl_3', bc(m + '.branch3x3dbl_2', bc(m + '.branch3x3dbl_1', x),
                                         pad=(1, 1)), pad=(1, 1)),
            bc(m + '.branch_pool', np_pool(x, 3, 1, 1, 'avg'))], -1)
    m = 'Mixed_6a'
    x = np.concatenate([bc(m + '.branch3x3', x, 2), bc(m + '.branch3x3dbl_3', bc(
        m + '.branch3x3dbl_2', bc(m + '.branch3x3dbl_1', x), pad=(1, 1)), 2),
        np_pool(x, 3, 2, 0, 'max')], -1)
    for m in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):
        b7 = bc(m + '.branch7x7_3', bc(m + '.branch7x7_2', bc(m + '.branch7x7_1', x),
                                       pad=(0, 3)), pad=(3, 0))
        bd = bc(m + '.branch7x7dbl_1', x)
        for i, p in zip(range(2, 6), ((3, 0), (0, 3), (3, 0), (0, 3))):
            bd = bc(f'{m}.branch7x7dbl_{i}', bd, pad=p)
        x = np.concatenate([bc(m + '.branch1x1', x), b7, bd,
                            bc(m + '.branch_pool', np_pool(x, 3, 1, 1, 'avg'))], -1)
    m = 'Mixed_7a'
    b7 = bc(m + '.branch7x7x3_3', bc(m + '.branch7x7x3_2', bc(m + '.branch7x7x3_1', x),
                                     pad=(0, 3)), pad=(3, 0))
    x = np.concatenate([bc(m + '.branch3x3_2', bc(m + '.branch3x3_1', x), 2),
                        bc(m + '.branch7x7x3_4', b7, 2), np_pool(x, 3, 2, 0, 'max')], -1)
    for m, op in (('Mixed_7b', 'avg'), ('Mixed_7c', 'max')):
        b3 = bc(m + '.branch3x3_1', x)
        bd = bc(m + '.branch3x3dbl_2', bc(m + '.branch3x3dbl_1', x), pad=(1, 1))
        x = np.concatenate([
            bc(m + '.branch1x1', x), bc(m + '.branch3x3_2a', b3, pad=(0, 1)),
            bc(m + '.branch3x3_2b', b3, pad=(1, 0)), bc(m + '.branch3x3dbl_3a', bd, pad=(0, 1)),
            bc(m + '.branch3x3dbl_3b', bd, pad=(1, 0)),
            bc(m + '.branch_pool', np_pool(x, 3, 1, 1, op))], -1)
    return x.mean(axis=(1, 2))


def np_layernorm(x, w, b):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * w + b


def np_dinov2(sd, x, heads=6):
    """x: already-normalized [b, 224, 224, 3]."""
    b = x.shape[0]
    t = np_conv(x, sd['patch_embed.proj.weight'], 14, bias=sd['patch_embed.proj.bias'])
    t = t.reshape(b, -1, t.shape[-1])
    t = np.concatenate([np.repeat(sd['cls_token'], b, 0), t], 1) + sd['pos_embed']
    n, d = t.shape[1:]
    for i in range(12):
        p = f'blocks.{i}.'
        h = np_layernorm(t, sd[p + 'norm1.weight'], sd[p + 'norm1.bias'])
        qkv = h @ sd[p + 'attn.qkv.weight'].T + sd[p + 'attn.qkv.bias']
        q, k, v = qkv.reshape(b, n, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
        t = t + sd[p + 'ls1.gamma'] * (o @ sd[p + 'attn.proj.weight'].T + sd[p + 'attn.proj.bias'])
        h = np_layernorm(t, sd[p + 'norm2.weight'], sd[p + 'norm2.bias'])
        h = h @ sd[p + 'mlp.fc1.weight'].T + sd[p + 'mlp.fc1.bias']
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        t = t + sd[p + 'ls2.gamma'] * (h @ sd[p + 'mlp.fc2.weight'].T + sd[p + 'mlp.fc2.bias'])
    return np_layernorm(t, sd['norm.weight'], sd['norm.bias'])[:, 0]


def _images(n, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


# ------------------------------------------------------------------ tests

@pytest.mark.slow
def test_inception_port_matches_numpy_reference(tmp_path):
    from safetensors.numpy import save_file
    shapes = _torch_layout_shapes(nnx.eval_shape(F.InceptionV3))
    sd = _random_checkpoint(shapes, 1)
    extra = dict(sd, **{'fc.weight': np.zeros((1008, 2048), np.float32),
                        'Conv2d_1a_3x3.bn.num_batches_tracked': np.zeros((), np.float32)})
    path = str(tmp_path / 'pt_inception.safetensors')
    save_file(extra, path)
    f = F.get('inception', {'inception': path}, batch_size=2)
    images = _images(2)
    ours = f(images)
    ref = np_inception({k: v.astype(np.float64) for k, v in sd.items()},
                       images.astype(np.float64))
    assert ours.shape == (2, 2048)
    err = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
    print(f'inception: max abs diff {np.max(np.abs(ours - ref)):.3g}, relative {err:.3g}')
    assert err < 1e-4


@pytest.mark.slow
def test_dinov2_port_matches_numpy_reference(tmp_path):
    shapes = _torch_layout_shapes(nnx.eval_shape(F.DINOv2))
    sd = _random_checkpoint(shapes, 2)
    path = str(tmp_path / 'dinov2_vits14.npz')
    np.savez(path, mask_token=np.zeros((1, 384), np.float32), **sd)
    f = F.get('dinov2', {'dinov2': path}, batch_size=2)
    images = _images(2, seed=1)
    ours = f(images)
    # the reference: PIL's bicubic to 256 (the shorter side), then the centre 224 crop
    x = np.stack([np.asarray(Image.fromarray(im[..., 0].astype(np.float32) / 255.0, 'F').resize(
        (256, 256), Image.BICUBIC))[16:240, 16:240] for im in images])[..., None].repeat(3, -1)
    x = (x - np.array(F.DINOv2.mean)) / np.array(F.DINOv2.std)
    ref = np_dinov2({k: v.astype(np.float64) for k, v in sd.items()}, x)
    assert ours.shape == (2, 384)
    diff = np.max(np.abs(ours - ref))
    print(f'dinov2: max abs diff {diff:.3g} (feature scale {np.max(np.abs(ref)):.3g})')
    assert diff < 2e-3 * np.max(np.abs(ref))


def test_dinov2_resamples_the_518px_position_grid():
    sd_pos = np.random.default_rng(0).normal(size=(1, 1 + 37 * 37, 384)).astype(np.float32)
    sd_pos[0, 1:] = 0.25  # a constant grid stays constant under bicubic resampling
    out = F._resize_pos_embed('pos_embed', sd_pos, (1, 257, 384))
    assert out.shape == (1, 257, 384)
    np.testing.assert_array_equal(out[0, 0], sd_pos[0, 0])
    np.testing.assert_allclose(out[0, 1:], 0.25, atol=1e-5)


def test_wrong_or_missing_weights_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match='needs weights: a local'):
        F.get('inception', {'inception': ''})
    with pytest.raises(FileNotFoundError, match='no such file'):
        F.get('dinov2', {'dinov2': str(tmp_path / 'nope.safetensors')})
    path = str(tmp_path / 'other.npz')
    np.savez(path, **{'something.weight': np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="weights have no tensor '"):
        F.get('dinov2', {'dinov2': path})
    with pytest.raises(ValueError, match='feature space .clip.; allowed: pixel, digits'):
        F.get('clip')


def test_convert_writes_safetensors_in_the_same_layout(tmp_path):
    sd = {'a.weight': np.arange(6, dtype=np.float32).reshape(2, 3), 'b': np.ones(4, np.float32)}
    src = str(tmp_path / 'ckpt.npz')
    np.savez(src, **sd)
    dst = str(tmp_path / 'ckpt.safetensors')
    F.convert(src, dst)
    back = F.load_state_dict(dst)
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)


def test_convert_reads_a_pytorch_pickle(tmp_path):
    torch = pytest.importorskip('torch')
    src = str(tmp_path / 'ckpt.pth')
    torch.save({'w.weight': torch.arange(4.0).reshape(2, 2)}, src)
    dst = str(tmp_path / 'ckpt.safetensors')
    F.convert(src, dst)
    np.testing.assert_array_equal(F.load_state_dict(dst)['w.weight'], [[0, 1], [2, 3]])


def test_digits_classifier_is_the_fixed_file_and_accurate(digits_features):
    f = digits_features
    assert F.sha256(F.DIGITS_WEIGHTS) == F.DIGITS_SHA256
    from collapse_jax import data
    x, y = data.read_source('mnist5k')
    # the stored accuracy is what the weights score on the 500 digits they never saw
    held = data.real_order(len(x), 12345)[4500:]
    probs = F.Featurizer('p', F.digits_classifier('', F.DigitsProbabilities)[0])(x[held])
    acc = float(np.mean(np.argmax(probs, -1) == y[held]))
    assert acc >= 0.95 and f.info['accuracy'] == pytest.approx(acc, abs=1e-6)
    feats = f(x[:200])
    assert feats.shape == (200, 128) and np.all(np.isfinite(feats))
    # pinned: the same features on every machine, so digits-space FDs reproduce
    np.testing.assert_allclose(feats[:4].astype(np.float64).sum(1),
                               [219.43787, 232.87939, 210.73436, 226.96659], rtol=1e-5)
    np.testing.assert_allclose(feats[:2, 1], [3.21100, 3.79010], rtol=1e-4)
    # features separate the classes: nearest neighbour (leave-one-out) mostly shares the label
    d = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(y[:200][d.argmin(1)] == y[:200]) > 0.8
    assert F.get('digits') is f  # one model (and one compilation) per process


def test_a_changed_weights_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / 'digits_cnn.npz'
    bad.write_bytes(open(F.DIGITS_WEIGHTS, 'rb').read()[:-1] + b'x')
    from collapse_jax.features import digits
    monkeypatch.setattr(digits, 'DIGITS_WEIGHTS', str(bad))
    with pytest.raises(ValueError, match='not the project.s digits weights'):
        F.digits_classifier()
    with pytest.raises(ValueError, match='features.digits=.*no such file'):
        F.digits_classifier(str(tmp_path / 'none.npz'))


@pytest.mark.slow
def test_train_digits_command_writes_an_accurate_classifier(tmp_path):
    out = str(tmp_path / 'digits.npz')
    p = subprocess.run([sys.executable, '-m', 'collapse_jax.features', 'train-digits', out],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout.strip().splitlines()[-1])
    assert rec['heldout_accuracy'] >= 0.95 and rec['sha256'] == F.sha256(out)
    model, acc = F.digits_classifier(out)
    assert acc == pytest.approx(rec['heldout_accuracy'])


def test_features_on_one_and_four_devices_agree():
    """A batch split over the 4 (faked) devices gives the features of one device (the same
    network per image; only XLA's choice of kernels for 16 against 64 images may move the last
    bits), and ragged inputs keep their length."""
    import jax
    model, _ = F.digits_classifier()
    images = np.random.default_rng(3).integers(0, 256, (150, 16, 16, 1), dtype=np.uint8)
    devs = jax.local_devices()
    one = F.Featurizer('digits', model, 64, devices=devs[:1])(images)
    four = F.Featurizer('digits', model, 64, devices=devs)(images)
    assert one.shape == four.shape == (150, 128) and np.abs(one).max() > 0
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-5)

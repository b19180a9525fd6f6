"""Workdirs on an object store: the run on gs:// (a GCS API emulator on 127.0.0.1, the `gcs`
fixture) equals the same run on a local disk, resumes there, and leaves only whole objects.
The killed-and-resumed run on gs:// is in test_resume.py."""
import os

import numpy as np
import pytest
from etils import epath

from collapse_jax import files
from helpers import run_one, strip

pytestmark = pytest.mark.slow


def test_path_layer_writes_reads_lists_and_appends_objects(gcs):
    root = f'{gcs}/layer'
    assert not files.exists(root) and files.listdir(root) == []
    files.save_npy(f'{root}/a/x.npy', np.arange(6).reshape(2, 3))
    files.save_json(f'{root}/a/c.json', {'k': 1})
    files.append_jsonl(f'{root}/log.jsonl', {'i': 0})
    files.append_jsonl(f'{root}/log.jsonl', {'i': 1})
    assert files.isdir(f'{root}/a') and files.listdir(f'{root}/a') == ['c.json', 'x.npy']
    np.testing.assert_array_equal(files.load_npy(f'{root}/a/x.npy', ''), np.arange(6).reshape(2, 3))
    assert files.read_json(f'{root}/a/c.json') == {'k': 1}
    assert files.read_jsonl(f'{root}/log.jsonl') == [{'i': 0}, {'i': 1}]
    files.copy(f'{root}/a/c.json', f'{root}/b/c.json')
    assert files.read_json(f'{root}/b/c.json') == {'k': 1}
    with pytest.raises(FileNotFoundError):
        files.load_npy(f'{root}/missing.npy', '')

    def broken(f):  # a write that dies half-way leaves no object under the final name
        f.write(b'\x93NUMPY half')
        raise KeyboardInterrupt('killed mid-write')
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(f'{root}/a/y.npy', broken)
    assert not files.exists(f'{root}/a/y.npy')


def test_a_run_on_gs_equals_the_run_on_a_local_disk_and_resumes_there(gcs, engine, uninterrupted):
    cfg, want, local = uninterrupted
    workdir = f'{gcs}/run'
    assert strip(run_one(cfg, workdir, engine)) == want
    for g in (0, 1):
        for name in ('train_images.npy', 'train_source.npy', 'pool.npy', 'eval.npy',
                     'heldout.npy'):
            np.testing.assert_array_equal(
                files.load_npy(f'{workdir}/gen_{g:03d}/{name}', ''),
                np.load(os.path.join(local, f'gen_{g:03d}', name)), err_msg=name)
    assert strip(files.read_jsonl(f'{workdir}/metrics.jsonl')) == want
    ckpts = sorted(p.name for p in epath.Path(f'{workdir}/gen_001/ckpt').iterdir())
    assert ckpts == sorted(os.listdir(os.path.join(local, 'gen_001', 'ckpt')))
    assert files.exists(f'{workdir}/report.html') and files.exists(f'{workdir}/curves.png')
    # a rerun finds every phase done on the object store and only reads
    before = {str(p): p.stat().mtime for p in epath.Path(workdir).glob('gen_*/*.npy')}
    assert strip(run_one(cfg, workdir, engine)) == want
    assert {str(p): p.stat().mtime for p in epath.Path(workdir).glob('gen_*/*.npy')} == before
    # compare reads runs on the bucket and on the disk, and writes its page to the bucket
    from collapse_jax import layout, report
    out = layout.SweepDir(f'{gcs}/compare')
    report.write_compare(out, {'on gs': workdir, 'local': str(local)})
    assert b'on gs' in files.read_bytes(out.compare_html) and files.exists(out.compare_png)


def test_data_weights_and_scored_arrays_are_read_from_objects(gcs, tmp_path):
    from collapse_jax import data, measure
    from collapse_jax.features import torch_weights
    from PIL import Image
    x = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 1), dtype=np.uint8)
    files.save_npy(f'{gcs}/in/x.npy', x)
    np.testing.assert_array_equal(data.read_source(f'{gcs}/in/x.npy')[0], x)
    np.testing.assert_array_equal(measure.load_images(f'{gcs}/in/x.npy', 'generated'), x)
    for i, im in enumerate(x):  # an image folder on the bucket
        png = Image.fromarray(im[..., 0])
        files.atomic_write(f'{gcs}/folder/{i}.png', lambda f, png=png: png.save(f, format='PNG'))
    np.testing.assert_array_equal(data.read_source(f'{gcs}/folder')[0][..., :1], x)
    w = {'conv.weight': np.ones((2, 3), np.float32)}
    files.atomic_write(f'{gcs}/w/net.npz', lambda f: np.savez(f, **w))
    np.testing.assert_array_equal(torch_weights.load_state_dict(f'{gcs}/w/net.npz')['conv.weight'],
                                  w['conv.weight'])
    with pytest.raises(ValueError, match='no such file or folder'):
        data.read_source(f'{gcs}/nothing')

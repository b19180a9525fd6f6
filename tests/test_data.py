import numpy as np
import pytest
from PIL import Image

from collapse_jax import data


@pytest.mark.slow
def test_embedded_mnist5k_is_real_labelled_digits():
    x, y = data.read_source('mnist5k')
    assert x.shape == (5000, 28, 28, 1) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [500] * 10
    assert x.max() == 255 and 0.05 < (x > 128).mean() < 0.3  # ink on a dark background


def test_embedded_sklearn_digits_scaled_to_255():
    x, y = data.read_source('digits')
    assert x.shape == (1797, 8, 8, 1) and x.max() == 255 and y.max() == 9


def test_conform_pads_resizes_and_converts_channels():
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    padded = data.conform(x, 32, 1, 'pad')
    assert padded.shape == (3, 32, 32, 1)
    np.testing.assert_array_equal(padded[:, 2:30, 2:30], x)
    assert padded[:, :2].max() == 0
    rgb = data.conform(x, 16, 3, 'resize')
    assert rgb.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    gray = data.conform(np.full((2, 4, 4, 3), [255, 0, 0], np.uint8), 4, 1)
    assert gray.shape == (2, 4, 4, 1) and int(gray[0, 0, 0, 0]) == 76  # 0.299 * 255
    with pytest.raises(ValueError, match="data.resize=pad cannot shrink"):
        data.conform(x, 16, 1, 'pad')
    with pytest.raises(ValueError, match='data.channels=2; allowed: 1, 3'):
        data.conform(x, 28, 2)


def test_npy_and_folder_sources(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / 'a.npy', x)
    np.testing.assert_array_equal(data.read_source(str(tmp_path / 'a.npy'))[0], x)
    np.save(tmp_path / 'f.npy', x[..., 0] / 255.0)
    np.testing.assert_array_equal(data.read_source(str(tmp_path / 'f.npy'))[0], x[..., :1])
    np.save(tmp_path / 'bad.npy', x.astype(np.float32))  # floats beyond [0, 1]
    with pytest.raises(ValueError, match=r'bad.npy.*float values in \[0, 255\]; allowed: \[0, 1\]'):
        data.read_source(str(tmp_path / 'bad.npy'))
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for i in range(5):
        Image.fromarray(x[i]).save(folder / f'{i}.png')
    np.testing.assert_array_equal(data.read_source(str(folder))[0], x)


def test_tfds_source_under_mock():
    tfds = pytest.importorskip('tensorflow_datasets')
    with tfds.testing.mock_data(num_examples=12):
        x, y = data.read_source('mnist', 'train')
    assert x.shape == (12, 28, 28, 1) and x.dtype == np.uint8 and y.shape == (12,)


def test_offline_tfds_name_fails_with_one_clear_line(tmp_path):
    with pytest.raises(ValueError) as e:
        data.read_source('cifar10', 'train', str(tmp_path))
    msg = str(e.value)
    assert "data.source='cifar10'" in msg and "'mnist5k'" in msg and '\n' not in msg


def test_a_tfds_error_is_shown_with_the_array_record_advice(monkeypatch):
    tfds = pytest.importorskip('tensorflow_datasets')

    def tfrecord_only(*a, **k):  # what TFDS says of a dataset built in the default TFRecord
        raise NotImplementedError('Random access data source for file format FileFormat.TFRECORD'
                                  '\n is not supported.')
    monkeypatch.setattr(tfds, 'data_source', tfrecord_only)
    with pytest.raises(ValueError) as e:
        data.read_source('tfds:cifar10', 'train', '/data/tfds')
    msg = str(e.value)
    assert 'NotImplementedError: Random access data source for file format FileFormat.TFRECORD ' \
        'is not supported.' in msg and '--file_format=array_record' in msg and '\n' not in msg


def test_missing_file_is_a_clear_error():
    with pytest.raises(ValueError, match='no such file'):
        data.read_source('/nonexistent/x.npy')


def test_a_corrupt_image_in_a_folder_or_a_truncated_npy_is_one_line_naming_the_file(tmp_path):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f'{i}.png')
    (folder / '1.png').write_bytes((folder / '1.png').read_bytes()[:20])  # cut short
    with pytest.raises(ValueError) as e:
        data.read_source(str(folder))
    msg = str(e.value)
    assert '\n' not in msg and '1.png is not a readable image' in msg and 'remove or replace' in msg
    arr = tmp_path / 'x.npy'
    np.save(arr, np.zeros((10, 8, 8, 1), np.uint8))
    arr.write_bytes(arr.read_bytes()[:200])  # truncated
    with pytest.raises(ValueError) as e:
        data.read_source(str(arr))
    msg = str(e.value)
    assert '\n' not in msg and str(arr) in msg and 'not a readable .npy' in msg
    assert 'write the array again' in msg

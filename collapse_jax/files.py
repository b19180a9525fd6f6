"""The one path layer of a run: every file a run reads or writes goes through here, on a local
disk or wherever `etils.epath` reaches (gs:// first; orbax writes its checkpoints there itself).

Writes are whole or absent: locally a temp file in the same folder, then rename; on an object
store the object is uploaded directly, since it appears under its name only when the upload
completes (a killed upload leaves nothing)."""
from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np
from etils import epath


class StoreError(RuntimeError):
    """An object store refused a write: one line naming the object (main prints it)."""


def is_url(path) -> bool:
    """gs://bucket/..., s3://...: a path on an object store, not the local filesystem."""
    return '://' in os.fspath(path)


def absolute(path) -> str:
    """A local path made absolute; a URL as it is."""
    path = os.fspath(path)
    return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def exists(path) -> bool:
    return os.path.exists(path) if not is_url(path) else epath.Path(path).exists()


def isdir(path) -> bool:
    return os.path.isdir(path) if not is_url(path) else epath.Path(path).is_dir()


def isfile(path) -> bool:
    return os.path.isfile(path) if not is_url(path) else epath.Path(path).is_file()


def listdir(path) -> list:
    """The names in a folder (an object store's prefix), sorted; [] if there is none."""
    if not isdir(path):
        return []
    return sorted(os.listdir(path) if not is_url(path) else
                  (p.name for p in epath.Path(path).iterdir()))


def makedirs(path) -> None:
    """A local folder and its parents; nothing on an object store, whose folders are prefixes."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def open_file(path, mode='rb'):
    return open(path, mode) if not is_url(path) else epath.Path(path).open(mode)


def read_bytes(path) -> bytes:
    with open_file(path, 'rb') as f:
        return f.read()


def copy(src, dst):
    """dst becomes a whole copy of src."""
    data = read_bytes(src)
    atomic_write(dst, lambda f: f.write(data))


def atomic_write(path, write):
    """Calls write(file_object) on a temp file beside `path`, then renames it onto `path`; on an
    object store, on a buffer uploaded as the object in one piece."""
    path = os.fspath(path)
    if is_url(path):
        buf = io.BytesIO()
        write(buf)
        try:
            epath.Path(path).write_bytes(buf.getvalue())
        except Exception as e:  # noqa: BLE001 - gcsfs's errors are often a bare URL
            raise StoreError(f'{path}: the object could not be written ({type(e).__name__}: '
                             f'{" ".join(str(e).split())[:200]}); check that the bucket exists '
                             'and this machine may write to it') from None
        return
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', prefix='.tmp-')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_npy(path, array):
    atomic_write(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def save_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def save_jsonl(path, records):
    atomic_write(path, lambda f: f.write(''.join(json.dumps(r, sort_keys=True) + '\n'
                                                 for r in records).encode()))


def append_jsonl(path, record):
    """One record appended as one line in one write (a log that grows: rewriting it per line
    costs its length squared). A kill mid-write leaves at most a last line without its newline,
    which read_jsonl drops. An object cannot be appended to: there the object is written again
    whole (logs hold a few hundred lines)."""
    line = json.dumps(record, sort_keys=True) + '\n'
    if is_url(path):
        old = read_bytes(path) if exists(path) else b''
        atomic_write(path, lambda f: f.write(old + line.encode()))
        return
    with open(path, 'a') as f:
        f.write(line)


def read_jsonl(path):
    """The records of a JSON-lines file; a last line cut short by a kill (no newline) is
    dropped."""
    if not exists(path):
        return []
    with open_file(path, 'r') as f:
        return [json.loads(line) for line in f if line.endswith('\n') and line.strip()]


def load_npy(path, fix: str, mmap_mode=None):
    """np.load, with an unreadable file (truncated, corrupt, not a .npy) as one ValueError that
    names the file and says what to do (`fix`)."""
    try:
        if is_url(path):  # read whole: an object cannot be memory-mapped
            return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
        return np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        why = ' '.join(str(e).split())[:120]
        raise ValueError(f'{path}: not a readable .npy array ({type(e).__name__}: {why}); '
                         f'{fix}') from None


def read_json(path):
    with open_file(path, 'r') as f:
        return json.load(f)

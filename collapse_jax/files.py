"""Atomic file writes: a temp file in the same folder, then rename, so a reader (or a resumed
run) sees the whole file or none of it."""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np


def atomic_write(path, write):
    """Calls write(file_object) on a temp file beside `path`, then renames it onto `path`."""
    path = os.fspath(path)
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
    which read_jsonl drops."""
    with open(path, 'a') as f:
        f.write(json.dumps(record, sort_keys=True) + '\n')


def read_jsonl(path):
    """The records of a JSON-lines file; a last line cut short by a kill (no newline) is
    dropped."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith('\n') and line.strip()]


def load_npy(path, fix: str, mmap_mode=None):
    """np.load, with an unreadable file (truncated, corrupt, not a .npy) as one ValueError that
    names the file and says what to do (`fix`)."""
    try:
        return np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        why = ' '.join(str(e).split())[:120]
        raise ValueError(f'{path}: not a readable .npy array ({type(e).__name__}: {why}); '
                         f'{fix}') from None


def read_json(path):
    with open(path) as f:
        return json.load(f)

"""Atomic writes and the appended log (collapse_jax.files)."""
from collapse_jax import files


def test_appended_log_reads_back_and_drops_a_line_cut_by_a_kill(tmp_path):
    path = str(tmp_path / 'log.jsonl')
    for step in (1, 2):
        files.append_jsonl(path, dict(step=step, loss=0.5 / step))
    with open(path, 'a') as f:
        f.write('{"step": 3, "lo')  # a kill mid-write: no newline
    assert files.read_jsonl(path) == [dict(step=1, loss=0.5), dict(step=2, loss=0.25)]
    files.save_jsonl(path, files.read_jsonl(path))  # the resume's one rewrite heals the file
    files.append_jsonl(path, dict(step=3, loss=0.1))
    assert [r['step'] for r in files.read_jsonl(path)] == [1, 2, 3]

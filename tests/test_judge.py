"""The Judge's reference sets: which real images it holds out, and from what."""
import hashlib

import numpy as np

from collapse_jax import judge, loop
from helpers import tiny


def hashes(images):
    return {hashlib.sha256(x.tobytes()).hexdigest() for x in images}


def test_heldout_real_is_disjoint_from_every_trainable_image_and_shared_by_paradigms():
    """By content, not by row: the held-out real images (the copy measures' H_0, the calibrated
    distance's source, the FD reference and its floor) share no image with D_0 or with any
    generation's fresh real images; and a seed's paradigms hold out the same images, so one
    calibrated distance and one FD reference serve every variant."""
    cfg = tiny(paradigm='fresh', selection='random', generations=4, fresh_fraction=0.25)
    cfg.score.update(eval_n=64, fd_n=64)
    real = loop.real_split(cfg)
    jd = judge.Judge(cfg, real)
    trainable = hashes(real.d0()[0]) | set().union(
        *(hashes(real.images[real.fresh_rows(g)]) for g in range(cfg.loop.generations - 1)))
    assert len(trainable) == cfg.data.n + 3 * 4
    held = [jd.heldout_real, jd.reference['images'], jd.floor_images]
    assert [len(h) for h in held] == [64, 64, 64]
    assert not set().union(*map(hashes, held)) & trainable
    assert len(set().union(*map(hashes, held))) == 3 * 64  # three disjoint parts
    replace = cfg.copy_and_resolve_references()
    replace.loop.paradigm = 'replace'
    other = judge.Judge(replace, loop.real_split(replace))
    np.testing.assert_array_equal(other.heldout_real, jd.heldout_real)
    np.testing.assert_array_equal(other.reference['images'], jd.reference['images'])
    assert other.copy_threshold() == jd.copy_threshold()

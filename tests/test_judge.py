"""The Judge's reference sets: which real images it holds out, and from what."""
import hashlib

import numpy as np
import pytest

from collapse_jax import judge, layout, loop
from collapse_jax.store import REAL, ArrayStore, Source
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


def test_record_on_arrays_copies_and_fresh_draws():
    """Judge.record from a store of plain arrays: a pool of D_g's own images is every copy
    measure's extreme (AUC 0, every sample within the calibrated distance, GS 0), and a pool of
    fresh draws of D_g's law sits at the relative measures' null; H_1 repeats D_1's construction
    (replace:none: N of N draws) on E_0, all of it."""
    cfg = tiny(paradigm='replace', selection='none')
    real = loop.real_split(cfg)
    jd = judge.Judge(cfg, real)
    law = real.images[1000:1200]  # held out of nothing the test trains: one law for all parts
    d_g = layout.TrainSet(law[:16], None, np.full(16, REAL.code, np.int16), np.arange(16), {})
    copies = np.concatenate([law[:16], law[:16]])
    for pool, copying in ((copies, True), (law[100:132], False)):
        store = ArrayStore({Source.pool(1): pool}, n=16, pool_size=32,
                           evals={0: law[16:80], 1: pool})
        rec, nn_idx, held = jd.record(1, d_g, store)
        assert held.shape == (64, 8, 8, 1) and rec['copy_heldout_n'] == 64
        assert sorted(map(bytes, held)) == sorted(map(bytes, law[16:80]))  # every draw, once
        assert rec['n_pool'] == 32 and rec['real_share'] == 1.0
        if copying:
            np.testing.assert_array_equal(nn_idx, np.tile(np.arange(16), 2))
            assert rec['copy_auc'] == 0.0 and rec['copy_share_q05'] == 1.0
            assert rec['memorization_calibrated'] == 1.0 and rec['gs_l2'] == 0.0
        else:
            assert 0.3 < rec['copy_auc'] < 0.7 and rec['copy_share_q05'] < 0.2
            assert rec['gs_l2'] == pytest.approx(rec['gs_l2_null'], rel=0.15)

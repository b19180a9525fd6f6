"""Random streams: named, seeded by the run's own seed, and never shared by two names or seeds."""
import jax
import numpy as np
import pytest

from collapse_jax import streams


def test_numpy_streams_differ_by_name_seed_and_index_and_repeat_exactly():
    draw = lambda *a: streams.numpy_rng(*a).integers(2 ** 62, size=4).tolist()  # noqa: E731
    seen = {}
    for args in [(0, 'real_order'), (1, 'real_order'), (0, 'batches', 0, 7), (0, 'batches', 1, 7),
                 (0, 'candidates', 0), (0, 'selection', 0), (0, 'mirror', 0), (1, 'candidates', 0),
                 (0, 'candidates', 7)]:
        v = tuple(draw(*args))
        assert v not in seen, (args, seen.get(v))
        seen[v] = args
    assert draw(3, 'batches', 2, 5) == draw(3, 'batches', 2, 5)


def test_jax_streams_differ_by_name_and_seed():
    bits = lambda *a: np.asarray(jax.random.key_data(streams.jax_key(*a))).tolist()  # noqa: E731
    keys = [bits(0, 'train', 0), bits(0, 'sample', 0), bits(0, 'eval', 0), bits(1, 'train', 0),
            bits(0, 'train', 1)]
    assert len({str(k) for k in keys}) == len(keys)
    assert bits(0, 'sample', 0) != bits(1, 'train', 0)  # sampling is not the next seed's training


def test_initial_weights_draw_no_key_another_stream_uses():
    """nnx.Rngs hands out fold_in(its key, i); from key(seed) those would be the train, sample
    and eval roots. The weights come from the init stream, through train.init_params."""
    from flax import nnx
    from collapse_jax import train
    from helpers import tiny
    bits = lambda k: str(np.asarray(jax.random.key_data(k)).tolist())  # noqa: E731
    roots = {bits(jax.random.fold_in(streams.jax_key(0, name, 0), 0)) for name in
             ('train', 'sample', 'eval')} | {bits(jax.random.fold_in(jax.random.key(0), i))
                                             for i in range(3)}
    drawn = nnx.Rngs(streams.jax_key(0, 'init'))
    assert not {bits(drawn.params()) for _ in range(50)} & roots
    bare = nnx.Rngs(0)  # what the weights drew before: the train stream's root
    assert bits(bare.params()) == bits(jax.random.fold_in(jax.random.key(0), 0))
    cfg = tiny()
    want = train.make_model(cfg, streams.jax_key(cfg.seed, 'init'))
    got = train.init_params(cfg)
    np.testing.assert_array_equal(jax.tree.leaves(got)[0],
                                  jax.tree.leaves(nnx.to_pure_dict(nnx.state(want)))[0])


def test_unknown_stream_or_wrong_index_is_an_error():
    with pytest.raises(ValueError, match="random stream 'noise'; allowed: "):
        streams.numpy_rng(0, 'noise')
    with pytest.raises(ValueError, match="'batches' takes 2 indices"):
        streams.numpy_rng(0, 'batches', 1)

import os

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from collapse_jax import data, diffusion, parallel, train
from collapse_jax import engine as engine_lib
from helpers import tiny_train as tiny_config


@pytest.fixture(scope='module')
def digits():
    images, labels = data.read_source('digits')
    return images[:64], labels[:64]


def make_step(cfg, mesh):
    graphdef, params = train.model_graph(cfg), train.init_params(cfg)
    tx = train.make_optimizer(cfg, 100)
    step = train.make_train_step(graphdef, tx, diffusion.linear_alphas_cumprod(), cfg, mesh)
    return step, params, tx


def run_steps(cfg, mesh, images, steps, compiled=None):
    step, params, tx = compiled or make_step(cfg, mesh)
    state = jax.device_put(train.init_state(params, tx, cfg.train.ema), parallel.replicated(mesh))
    key, losses = jax.random.key(0), []
    for s in range(steps):
        idx = train.batch_indices(len(images), 16, s, 0, 0)
        batch = parallel.shard_batch(mesh, images[idx])
        state, m = step(state, batch, parallel.shard_batch(mesh, np.zeros(16, np.int32)), key)
        losses.append(float(m['loss']))
    return jax.device_get(state), losses


@pytest.fixture(scope='module')
def four_device_step():
    cfg = tiny_config(ema=True, feed='host')  # the step itself, fed batch by batch
    return cfg, make_step(cfg, parallel.make_mesh())


@pytest.mark.slow
def test_four_devices_match_one_device(digits, four_device_step):
    cfg, compiled = four_device_step
    one, l1 = run_steps(cfg, parallel.make_mesh(jax.devices()[:1]), digits[0], 3)
    four, l4 = run_steps(cfg, parallel.make_mesh(), digits[0], 3, compiled)
    np.testing.assert_allclose(l1, l4, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(one)[0], jax.tree.leaves(four)):
        name = jax.tree_util.keystr(path)
        if "['to_k']['bias']" in name:
            # softmax ignores a key bias: its true gradient is 0 and only summation-order noise
            # (~1e-12) reaches Adam, which scales any noise to a step of up to lr (2e-4 here).
            np.testing.assert_allclose(a, b, atol=3 * 2e-4 * 1.01, err_msg=name)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
    assert int(four['step']) == 3 and int(four['ema_count']) == 3


@pytest.mark.slow
def test_loss_falls(digits, four_device_step):
    cfg, compiled = four_device_step
    _, losses = run_steps(cfg, parallel.make_mesh(), digits[0], 100, compiled)
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20]), (losses[:5], losses[-5:])


def test_batches_cover_every_image_once_per_epoch():
    rows = np.concatenate([train.batch_indices(10, 4, s, seed=1, generation=2) for s in range(5)])
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
    assert not np.array_equal(rows[:10], rows[10:20])  # a new order each epoch


@pytest.fixture(scope='module')
def generation():
    """(config, engine, initial weights) of a 12-step training with EMA, one compiled step."""
    cfg = tiny_config(steps=12, ckpt_every=4, ema=True)
    return cfg, engine_lib.Engine(cfg, parallel.make_mesh()), train.init_params(cfg)


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_weights(digits, tmp_path, generation):
    cfg, eng, params = generation
    full = eng.train(cfg, *digits, 1, str(tmp_path / 'a'), params)
    calls = iter(range(100))
    part = eng.train(cfg, *digits, 1, str(tmp_path / 'b'), params,
                     engine_lib.Events(should_stop=lambda: next(calls) == 6))
    assert part.stopped and int(part.state['step']) == 7 and not full.stopped
    resumed = eng.train(cfg, *digits, 1, str(tmp_path / 'b'), params)
    assert resumed.final_loss == full.final_loss and resumed.steps == 12
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


TOL = 1e-5  # scan against one-step calls: another program, the same steps; 0 on XLA:CPU


@pytest.mark.slow
def test_device_feed_gives_the_host_feeds_bits_and_several_steps_a_call_resume_exactly(
        digits, tmp_path):
    """D_g on the devices, each batch gathered there: the same weights, bit for bit, as batches
    gathered in NumPy and sent (one step a call). Two steps a call (lax.scan) take the same
    steps in another program: within float rounding of those, and a run stopped after a call
    resumes to the uninterrupted run's bits (its calls fall on the same steps)."""
    out = {}
    for name, kw in (('host', dict(feed='host')), ('device', {}),
                     ('scan', dict(steps_per_call=2))):
        cfg = tiny_config(steps=12, ckpt_every=4, ema=True, **kw)
        eng = engine_lib.Engine(cfg, parallel.make_mesh())
        out[name] = eng.train(cfg, *digits, 1, str(tmp_path / name), train.init_params(cfg))
    assert cfg.train.feed == 'device' and cfg.train.log_every == 5  # calls: 0-2, 2-4, 4-5, ...
    assert sorted(k for _, k in eng.train_steps) == [1, 2]
    leaves = {k: jax.tree.leaves(jax.device_get(r.state)) for k, r in out.items()}
    for a, b, c in zip(leaves['host'], leaves['device'], leaves['scan']):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(c, a, rtol=0, atol=TOL)
    # the tolerance is float rounding, far below what one step moves: a dropped or repeated
    # step would fail it (the host feed stopped after 11 of its one-step calls)
    calls = iter(range(100))
    cfg_host = tiny_config(steps=12, ckpt_every=4, ema=True, feed='host')
    eleven = engine_lib.Engine(cfg_host, parallel.make_mesh()).train(
        cfg_host, *digits, 1, str(tmp_path / 'eleven'), train.init_params(cfg_host),
        engine_lib.Events(should_stop=lambda: next(calls) == 10))
    assert int(eleven.state['step']) == 11
    one_step = max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree.leaves(jax.device_get(eleven.state['params'])),
        jax.tree.leaves(jax.device_get(out['host'].state['params']))))
    assert one_step > 50 * TOL, one_step
    calls = iter(range(100))  # stop after the third call (step 5, between checkpoints)
    part = eng.train(cfg, *digits, 1, str(tmp_path / 'stopped'), train.init_params(cfg),
                     engine_lib.Events(should_stop=lambda: next(calls) == 2))
    assert part.stopped and int(part.state['step']) == 5
    resumed = eng.train(cfg, *digits, 1, str(tmp_path / 'stopped'), train.init_params(cfg))
    for a, b in zip(leaves['scan'], jax.tree.leaves(jax.device_get(resumed.state))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path, generation):
    cfg, eng, params = generation
    real = eng._step(cfg, 12)

    def poisoned(state, *batch):  # the real step, with the loss turning NaN at step 6
        state, m = real(state, *batch)
        return state, dict(m, loss=jnp.where(state['step'] >= 6, jnp.nan, m['loss']))

    bad = engine_lib.Engine(cfg, eng.mesh)
    bad.train_steps = {(train.step_signature(cfg, 12), 1): poisoned}
    with pytest.raises(FloatingPointError, match='lower --config.train.lr'):
        bad.train(cfg, *digits, 1, str(tmp_path), params)
    assert train.checkpoint_manager(str(tmp_path)).latest_step() == 4


@pytest.mark.slow
def test_bfloat16_training_and_sampling_agree_with_float32(tmp_path):
    """The same initial weights and batches, trained 400 steps and sampled in float32 and in
    bfloat16 compute. The tolerances are far below what separates two float32 runs that differ
    only in their seed (measured on this config: last-10 mean loss 0.131 vs 0.178, mean
    intensity 80.4 vs 79.5, variance 6.85 vs 6.51, GS 0.204 vs 0.200), and well above
    bfloat16's rounding (8-bit mantissa, 0.4% per operation; measured gaps 0.1% loss, 0.1
    intensity, 0.2% variance, 0.3% GS)."""
    from collapse_jax import judge, scoring
    from helpers import tiny as tiny_loop
    images = data.load(tiny_loop().data)[0][:64]
    params, out = train.init_params(tiny_loop()), {}
    for dtype in ('float32', 'bfloat16'):
        cfg = tiny_loop()
        cfg.model.dtype = dtype
        cfg.train.update(steps=400, log_every=10, ckpt_every=1000, warmup_steps=20)
        eng, losses = engine_lib.Engine(cfg), []
        res = eng.train(cfg, images, None, 0, str(tmp_path / dtype), params,
                        engine_lib.Events(on_log=lambda s, m: losses.append(m['loss'])))
        assert {str(x.dtype) for x in jax.tree.leaves(res.state['params'])} == {'float32'}
        pool = eng.sample(cfg, res.weights(False), 256, 0)[0]
        gs = scoring.generalization_score(pool.reshape(256, -1) / 127.5 - 1,
                                          images.reshape(64, -1) / 127.5 - 1, 'mse')
        out[dtype] = dict(losses=np.array(losses), loss=np.mean(losses[-10:]),
                          mean=pool.mean(), var=judge.pixel_variance(pool), gs=gs)
    f, b = out['float32'], out['bfloat16']
    assert not np.array_equal(f['losses'], b['losses'])  # bfloat16 did run
    assert b['loss'] == pytest.approx(f['loss'], rel=0.02)
    assert abs(b['mean'] - f['mean']) < 2.0
    assert b['var'] == pytest.approx(f['var'], rel=0.05)
    assert b['gs'] == pytest.approx(f['gs'], rel=0.05)


@pytest.mark.slow
def test_cpu_devices_train_beside_a_busy_process_without_abort_or_hang(tmp_path):
    """The CPU study's train step on cpu_devices=2 (XLA's in-process all-reduce) while another
    process takes a core: it must finish, with a falling loss, within the timeout (a hang fails
    it, an abort gives a non-zero exit)."""
    import subprocess
    import sys
    script = '''
import sys
import jax
jax.config.update('jax_num_cpu_devices', 2)
from configs import study_cpu
from collapse_jax import data, engine, train
cfg = study_cpu.get_config()
cfg.train.update(steps=300, log_every=50, ckpt_every=100000)
losses = []
eng = engine.Engine(cfg)
assert jax.device_count() == 2
res = eng.train(cfg, data.load(cfg.data)[0][:256], None, 0, sys.argv[1], train.init_params(cfg),
                engine.Events(on_log=lambda s, m: losses.append(m['loss'])))
assert res.steps == 300 and losses[-1] < losses[0], losses
'''
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    env.update(JAX_PLATFORMS='cpu', PYTHONPATH=root)
    hog = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        p = subprocess.run([sys.executable, '-c', script, str(tmp_path / 'ckpt')], env=env,
                           cwd=root, capture_output=True, text=True, timeout=900)
    finally:
        hog.kill()
    assert p.returncode == 0, p.stderr[-3000:]


def test_an_unreadable_checkpoint_says_what_is_usable(tmp_path):
    """A damaged latest checkpoint: one line naming it, and either the earlier step that is kept
    or that deleting ckpt/ trains the generation again."""
    import orbax.checkpoint as ocp
    state = {'w': np.arange(4.0), 'step': np.array(0, np.int32)}
    for keep, want in ((1, f'no earlier checkpoint is kept: delete {tmp_path / "k1"} to train '
                           'generation 3 again from its start'),
                       (2, 'an earlier checkpoint (step 2) is kept: delete')):
        d = str(tmp_path / f'k{keep}')
        mngr = train.checkpoint_manager(d, keep=keep)
        for step in (2, 4):
            mngr.save(step, args=ocp.args.StandardSave(dict(state, step=np.array(step, np.int32))))
        mngr.wait_until_finished()
        for root, _, names in os.walk(os.path.join(d, '4')):  # damage every file of step 4
            for name in names:
                with open(os.path.join(root, name), 'wb') as f:
                    f.write(b'\0')
        with pytest.raises(ValueError) as e:
            engine_lib.restore(train.checkpoint_manager(d, keep=keep), 4, state, d, 3)
        msg = str(e.value)
        assert '\n' not in msg and f'{d}: the checkpoint at step 4 cannot be read' in msg
        assert want in msg, msg
        if keep == 2:
            assert engine_lib.restore(train.checkpoint_manager(d, keep=2), 2, state, d, 3)[
                'step'] == 2

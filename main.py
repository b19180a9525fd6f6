"""collapse_jax entry point, one call per mode:

  run      python main.py --config=configs/<experiment>.py --workdir=<dir> [--config.x=y ...]
  score    python main.py --mode=score --generated=a.npy --train=b.npy [--reference=c.npy]
                          [--feature_space=digits] [--weights=file] [--out=scores.json]
  compare  python main.py --mode=compare --runs=<dir1>,<dir2>,... --workdir=<out dir>
  study    python main.py --mode=study --config=configs/study_cpu.py --workdir=<dir>
  calibrate python main.py --mode=calibrate --config=configs/calibrate_cpu.py --workdir=<dir>
  entropy  python main.py --mode=entropy --config=configs/entropy_cpu.py --workdir=<dir>

--dry_run with run, study, calibrate or entropy prints the plan and its projected time, and
writes nothing.
"""
import importlib
import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string('workdir', None, 'Run directory (created; a rerun resumes it).')
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_enum('mode', 'run', ['run', 'score', 'compare', 'study', 'calibrate', 'entropy'],
                  'What to do.')
flags.DEFINE_string('generated', '', 'score: .npy of generated images (uint8, or float in [0, 1]).')
flags.DEFINE_string('train', '', 'score: .npy of the training images they are measured against.')
flags.DEFINE_string('reference', '', 'score: .npy of held-out images: independent draws of the '
                    "distribution --train was drawn from, never trained on. FD and precision/"
                    'recall are measured against them, and with them the relative copy measures '
                    '(copy_z, copy_auc, copy_share_q05/q01) (default: --train, FD only).')
flags.DEFINE_string('feature_space', 'pixel', 'score: pixel | digits | inception | dinov2.')
flags.DEFINE_string('weights', '', 'score: weights file of the feature network.')
flags.DEFINE_string('out', '', 'score: JSON to write (default: <generated>.scores.json).')
flags.DEFINE_list('runs', [], 'compare: run directories to draw on shared axes.')
flags.DEFINE_bool('dry_run', False, 'run, study, calibrate, entropy: check the config, print '
                  'the plan (runs, variants, what each generation trains, samples and selects '
                  'from) and the projected time, and write nothing.')
flags.DEFINE_string('topology', '', "--dry_run: also project the time on this TPU slice, e.g. "
                    "'v5e:2x2' (needs libtpu; python -m collapse_jax.aot compiles every program)")
flags.DEFINE_float('mfu', 0.3, '--dry_run: the model FLOP utilisation assumed on an accelerator')
FLAGS = flags.FLAGS

# the modes that run a config in a workdir: (module, its function(cfg, workdir))
JOBS = dict(run=('loop', 'run'), study=('study', 'run_study'),
            calibrate=('calibrate', 'run_calibration'), entropy=('entropy', 'run_entropy'))


def _label(run_dir):
    from collapse_jax import files, layout
    try:
        lp = files.read_json(os.path.join(run_dir, 'config.json'))['loop']
        return layout.Variant(lp['paradigm'], lp['selection']).label
    except (OSError, KeyError, ValueError):
        return os.path.basename(os.path.normpath(run_dir))


def dispatch():
    if FLAGS.mode == 'score':
        from collapse_jax import measure
        measure.score_files(FLAGS.generated, FLAGS.train, FLAGS.reference, FLAGS.feature_space,
                            FLAGS.weights, FLAGS.out)
        return
    if not FLAGS.workdir:
        sys.exit('error: --workdir is required')
    if '://' not in FLAGS.workdir and os.path.isfile(FLAGS.workdir):
        sys.exit(f'error: --workdir={FLAGS.workdir} is a file; give a directory (new or a run to '
                 'resume)')
    if FLAGS.mode == 'compare':
        from collapse_jax import layout, report
        if len(FLAGS.runs) < 1:
            sys.exit('error: --runs needs one or more run directories, comma-separated')
        labels = [_label(d) for d in FLAGS.runs]
        if len(set(labels)) < len(labels):  # same variant in several dirs: name them by dir
            labels = [f'{lab} ({d})' for lab, d in zip(labels, FLAGS.runs)]
        print(report.write_compare(layout.SweepDir(FLAGS.workdir), dict(zip(labels, FLAGS.runs))))
        return
    from collapse_jax import parallel, plan  # after flag parsing: keeps --help fast
    if not FLAGS['config'].present:
        sys.exit('error: --config is required')
    path = config_flags.get_config_filename(FLAGS['config'])
    if not os.path.isfile(path):
        sys.exit(f'error: --config={path}: no such file')
    cfg = FLAGS.config
    plan.check_top_level(cfg)  # cpu_devices takes effect only before JAX starts
    if FLAGS.dry_run:
        from collapse_jax import dryrun
        print(dryrun.report(dryrun.describe(cfg, FLAGS.mode, FLAGS.topology, FLAGS.mfu)))
        return
    import jax
    if cfg.cpu_devices:
        jax.config.update('jax_num_cpu_devices', cfg.cpu_devices)
        if cfg.cpu_devices > 1:
            pylogging.getLogger('collapse_jax').warning(
                'cpu_devices=%d: XLA\'s CPU all-reduce has aborted or hung under heavy load from '
                'other processes (README, cpu_devices); rerun the same command to resume',
                cfg.cpu_devices)
    cache = parallel.compilation_cache(cfg, FLAGS.workdir)
    if cache:  # every process, restart and variant reuses the compiled programs
        jax.config.update('jax_compilation_cache_dir', cache)
    if cfg.distributed:
        parallel.initialize()
    module, function = JOBS[FLAGS.mode]
    getattr(importlib.import_module(f'collapse_jax.{module}'), function)(cfg, FLAGS.workdir)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and JAX are chatty at INFO
    pylogging.basicConfig(format='%(asctime)s %(message)s', datefmt='%H:%M:%S', force=True)
    pylogging.getLogger('collapse_jax').setLevel(pylogging.INFO)
    from collapse_jax.loop import Stopped
    try:
        dispatch()
    except Stopped as e:  # preempted: a checkpoint is saved; exit cleanly
        pylogging.getLogger('collapse_jax').warning('%s', e)
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as e:
        logging.debug('error', exc_info=True)
        sys.exit(f'error: {e}')


def parse_flags(argv):
    """absl's parser, with a bad or misspelled override as one line instead of a traceback."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        msg = ' '.join(str(e).replace('\\n', ' ').replace("\\'", "'").split())
        if len(msg) > 1 and msg[0] == msg[-1] == "'":  # a KeyError's repr
            msg = msg[1:-1]
        sys.exit(f'error: bad flag or config override: {msg}')


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)

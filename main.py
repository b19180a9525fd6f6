"""collapse_jax entry point: python main.py --config=configs/<experiment>.py --workdir=<dir>."""
import logging as pylogging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string('workdir', None, 'Run directory (created; a rerun resumes it).')
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and JAX are chatty at INFO
    pylogging.basicConfig(format='%(asctime)s %(message)s', datefmt='%H:%M:%S', force=True)
    pylogging.getLogger('collapse_jax').setLevel(pylogging.INFO)
    from collapse_jax import loop, parallel  # after flag parsing: keeps --help fast
    cfg = FLAGS.config
    if cfg is None or not FLAGS.workdir:
        sys.exit('error: --config and --workdir are required')
    if cfg.distributed:
        parallel.initialize()
    try:
        loop.run(cfg, FLAGS.workdir)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
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

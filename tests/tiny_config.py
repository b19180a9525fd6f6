"""helpers.tiny() as a config file, for tests that run main.py in subprocesses."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import tiny  # noqa: E402


def get_config():
    return tiny(paradigm='replace', selection='threshold', generations=2)

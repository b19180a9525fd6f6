"""Feature spaces for selection and scoring. Each maps uint8 images [n, h, w, c] to float32
features [n, d] and carries a name that goes beside every number computed in it.

`pixel` is raw pixels in [0, 255] (the reference's scale for entropy and the threshold tau).
Learned networks register here under their own names.
"""
from __future__ import annotations

import numpy as np

# default threshold-decay tau0 per feature space (DESIGN §2: 2000 in 0-255 pixels, 60 in features)
DEFAULT_TAU = {'pixel': 2000.0}


def pixel(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, np.float32).reshape(len(images), -1)


SPACES = {'pixel': pixel}


def get(name: str):
    if name not in SPACES:
        raise ValueError(f'loop.feature_space={name!r}; allowed: {", ".join(SPACES)}')
    return SPACES[name]

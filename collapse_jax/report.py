"""Pictures: sample grids, generated-beside-nearest-training grids, curves over generations."""
from __future__ import annotations

import io

import numpy as np
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from collapse_jax import files  # noqa: E402

CURVES = [('train_entropy', 'training-set entropy (nats, pixels 0-255)'),
          ('gs_l2', 'GS, L2 to nearest training image (pixels in [-1, 1])'),
          ('memorization', 'memorized share (d1/d2 < 1/3)'),
          ('pool_variance', 'sample variance, trace of covariance ([-1, 1])')]


def _tile(images, rows, cols, pad=1):
    n, h, w, c = images.shape
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(min(n, rows * cols)):
        r, q = divmod(i, cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h,
               pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
    return canvas


def save_image(path, canvas, min_side=192, max_side=2048):
    img = Image.fromarray(canvas.squeeze(-1) if canvas.shape[-1] == 1 else canvas)
    scale = max(1, min(min_side // min(img.size), max_side // max(img.size)))
    img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST)
    files.atomic_write(path, lambda f: img.save(f, format='PNG'))


def sample_grid(path, images):
    cols = int(np.ceil(np.sqrt(len(images))))
    save_image(path, _tile(images, int(np.ceil(len(images) / cols)), cols))


def nn_grid(path, generated, nearest):
    """Top row: generated images; bottom row: each one's nearest training image."""
    pairs = np.concatenate([generated, nearest])
    save_image(path, _tile(pairs, 2, len(generated)))


def _save_fig(path, fig):
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=90, bbox_inches='tight')
    plt.close(fig)
    files.atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_curves(path, runs):
    """runs: {label: [metric records]} -> one panel per measure, one line per run."""
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for ax, (key, title) in zip(axes, CURVES):
        for label, recs in runs.items():
            pts = [(r['generation'], r[key]) for r in recs if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker='o', label=label)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel('generation')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    _save_fig(path, fig)

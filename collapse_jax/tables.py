"""Markdown tables made from a study's results.json, and the blocks of a document that hold them,
so that no number in a table is typed by hand. A block in a markdown file:

  <!-- table docs/study/results.json replace/none absolute -->
  (generated)
  <!-- end table -->

names the results file (relative to the directory the command runs in), the variant and a
column set of COLUMNS; key=value words after them are parameters of a column set.

  python -m collapse_jax.tables docs/RESULTS.md           # regenerate every block in place
  python -m collapse_jax.tables --check docs/RESULTS.md   # exit 1 if a block is stale
"""
from __future__ import annotations

import math
import re
import sys

from collapse_jax import files
from collapse_jax.data import need

GEN = ('gen', '{generation}')
INTERVAL = '{{{0}:.3f}} [{{{0}_lo:.3f}}, {{{0}_hi:.3f}}]'
COLUMNS = {
    'absolute': [GEN, ('train entropy', '{train_entropy:.0f}'), ('GS (MSE)', '{gs_mse:.4f}'),
                 ('GS, L2 (null)', '{gs_l2:.2f} ({gs_l2_null:.2f})'),
                 ('calibrated share (null)',
                  '{memorization_calibrated:.3f} ({memorization_calibrated_null:.3f})'),
                 ('D_g near-copy share', '{train_near_copy_share:.3f}'),
                 ('ratio test', '{memorization:.3f}'),
                 ('held-out median', '{copy_heldout_median:.0f}'),
                 ('gs_ratio', '{gs_ratio:.2f}'), ('eff. dim', '{participation_ratio:.1f}')],
    'relative': [GEN, ('AUC [95%]', INTERVAL.format('copy_auc')),
                 ('share < q05 [95%]', INTERVAL.format('copy_share_q05')),
                 ('share < q01 [95%]', INTERVAL.format('copy_share_q01')),
                 ('copy_z', '{copy_z:+.1f}'), ('held-out n', '{copy_heldout_n}')],
    'fidelity': [GEN, ('FD (floor)', '{fd:.1f} ({fd_floor:.1f})'),
                 ('precision', '{precision:.2f}'), ('recall', '{recall:.2f}'),
                 ('recognizable (real)', '{recognizable:.2f} ({recognizable_real:.2f})'),
                 ('real share', '{real_share:.3f}')],
    # a study that recorded copy_z but not AUC: AUC from Z (no ties), with the sample count m
    # and the held-out sizes n0 (generation 0) and n (later) as parameters
    'from_z': [GEN, ('train entropy', '{train_entropy:.0f}'), ('GS (MSE)', '{gs_mse:.4f}'),
               ('gs_ratio', '{gs_ratio:.2f}'), ('ratio test', '{memorization:.3f}'),
               ('calibrated share', '{memorization_calibrated:.3f}'), ('copy_z', '{copy_z:+.1f}'),
               ('AUC from Z', '{auc_from_z:.3f}'), ('eff. dim', '{participation_ratio:.1f}'),
               ('FD (floor)', '{fd:.1f} ({fd_floor:.1f})'), ('recognizable', '{recognizable:.2f}')],
    # --mode=entropy's cells (docs/entropy/results.json): one row per parent count K
    'entropy': [('K', '{parents}'), ('train entropy', '{train_entropy:.0f}'),
                ('AUC [95%]', INTERVAL.format('copy_auc')),
                ('share < q05 [95%]', INTERVAL.format('copy_share_q05')),
                ('calibrated share (null)',
                 '{memorization_calibrated:.3f} ({memorization_calibrated_null:.3f})'),
                ('GS, L2 (null)', '{gs_l2:.2f} ({gs_l2_null:.2f})'),
                ("H's median L2 to D", '{copy_heldout_median:.0f}'),
                ('D near-copy share', '{train_near_copy_share:.3f}'),
                ('FD (floor)', '{fd:.1f} ({fd_floor:.1f})'),
                ('recognizable', '{recognizable:.2f}')],
}


def auc_from_z(z: float, m: int, n: int) -> float:
    """The Mann-Whitney AUC = U / (mn) from its Z with no ties: 1/2 + Z sqrt((m+n+1) / (12mn))."""
    return 0.5 + z * math.sqrt((m + n + 1) / (12.0 * m * n))


def _cell(template, row) -> str:
    try:
        return template.format(**row).replace('-', '\u2212')
    except (KeyError, TypeError, ValueError):  # not recorded (None or absent)
        return 'n/a'


def entropy_table(results: dict) -> str:
    """One row per parent count K of --mode=entropy's cells, in the plan's order (K = 0, plain
    real digits, as 'real'); each cell holds every seed's value, ' / ' between them."""
    rows, cols = results['rows'], COLUMNS['entropy']
    seeds = sorted({r['seed'] for r in rows})
    by = {(r['parents'], r['seed']): r for r in rows}
    out = [f'--mode=entropy, N = {rows[0]["n"]}, seed{"s" * (len(seeds) > 1)} '
           + ' / '.join(map(str, seeds)), '',
           '| ' + ' | '.join(h for h, _ in cols) + ' |', '|' + '---|' * len(cols)]
    for k in dict.fromkeys(r['parents'] for r in rows):
        cells = ['real' if k in (0, 'real') else str(k)] + [
            ' / '.join(_cell(t, by[k, s]) if (k, s) in by else 'n/a' for s in seeds)
            for _, t in cols[1:]]
        out.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(out) + '\n'


def variant_table(results: dict, variant: str, columns: str, **params) -> str:
    """One row per generation of `variant` at the headline N; each cell holds every seed's value,
    ' / ' between them, seeds in ascending order. columns='entropy' is `entropy_table`."""
    if columns not in COLUMNS:
        raise ValueError(f'columns={columns!r}; allowed: {", ".join(COLUMNS)}')
    if columns == 'entropy':
        return entropy_table(results)
    rows = [r for r in results['rows'] if r['variant'] == variant
            and r['n'] == results['headline_n']]
    if not rows:
        raise ValueError(f'variant={variant!r}: not in the results at N = '
                         f'{results["headline_n"]}')
    if columns == 'from_z':
        m, n0, n = (int(params[k]) for k in ('m', 'n0', 'n'))
        rows = [dict(r, auc_from_z=None if r.get('copy_z') is None else auc_from_z(
            r['copy_z'], m, n0 if r['generation'] == 0 else n)) for r in rows]
    seeds = sorted({r['seed'] for r in rows})
    by = {(r['seed'], r['generation']): r for r in rows}
    cols = COLUMNS[columns]
    out = [f'{variant}, N = {results["headline_n"]}, seed{"s" * (len(seeds) > 1)} '
           + ' / '.join(map(str, seeds)), '',
           '| ' + ' | '.join(h for h, _ in cols) + ' |', '|' + '---|' * len(cols)]
    for g in sorted({r['generation'] for r in rows}):
        cells = [str(g)] + [' / '.join(_cell(t, by[s, g]) if (s, g) in by else 'n/a'
                                       for s in seeds) for _, t in cols[1:]]
        out.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(out) + '\n'


def study_tables(results: dict) -> str:
    """Every variant's absolute, relative and fidelity tables (a study's table.md)."""
    variants = sorted({r['variant'] for r in results['rows']},
                      key=lambda v: (v != results.get('baseline'), v))
    return '\n'.join(variant_table(results, v, c) for v in variants
                     for c in ('absolute', 'relative', 'fidelity'))


# a block's body never holds another block's start, so a block without its end line is an error
# (`fill`), not a match that swallows the text up to the next block's end
BLOCK = re.compile(r'(<!-- table (\S+) (\S+) (\S+)((?: \w+=\S+)*) -->\n)'
                   r'((?:(?!<!-- table ).)*?)(<!-- end table -->)', re.S)


def fill(text: str) -> str:
    """`text` with every table block regenerated from its results file."""
    cache = {}

    def one(m):
        path, variant, columns, params = m.group(2), m.group(3), m.group(4), m.group(5)
        if path not in cache:
            cache[path] = files.read_json(path)
        kw = dict(p.split('=') for p in params.split())
        return m.group(1) + variant_table(cache[path], variant, columns, **kw) + m.group(7)
    ended = {m.start() for m in BLOCK.finditer(text)}
    for m in re.finditer(r'<!-- table .*? -->', text):
        need(m.start() in ended, f'line {text.count(chr(10), 0, m.start()) + 1}: no '
             f'"<!-- end table -->" closes the table block {m.group(0)}')
    return BLOCK.sub(one, text)


def main(argv) -> int:
    if not argv or '--help' in argv or '-h' in argv:
        print(__doc__)
        return 0 if argv else 2
    check = '--check' in argv
    paths = [a for a in argv if a != '--check']
    stale = []
    for path in paths:
        text = open(path, encoding='utf-8').read()
        try:
            new = fill(text)
        except ValueError as e:
            print(f'error: {path}: {e}', file=sys.stderr)
            return 2
        if new != text:
            stale.append(path)
            if not check:
                files.atomic_write(path, lambda f: f.write(new.encode('utf-8')))
    if check and stale:
        print(f'stale generated tables in {", ".join(stale)}: run python -m collapse_jax.tables '
              + ' '.join(stale))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

"""python -m collapse_jax.features convert IN.pth OUT.safetensors | train-digits OUT.npz"""
import json
import sys

from collapse_jax.features.digits import sha256, train_digits_classifier
from collapse_jax.features.torch_weights import convert

USAGE = ('usage: python -m collapse_jax.features convert IN.pth OUT.safetensors\n'
         '       python -m collapse_jax.features train-digits OUT.npz')

if __name__ == '__main__':
    if sys.argv[1:] in (['--help'], ['-h']):
        print(USAGE)
    elif sys.argv[1:2] == ['convert'] and len(sys.argv) == 4:
        convert(sys.argv[2], sys.argv[3])
        print(json.dumps(dict(written=sys.argv[3])))
    elif sys.argv[1:2] == ['train-digits'] and len(sys.argv) == 3:
        accuracy = train_digits_classifier(sys.argv[2])
        print(json.dumps(dict(written=sys.argv[2], heldout_accuracy=accuracy,
                              sha256=sha256(sys.argv[2]))))
    else:
        sys.exit(USAGE)

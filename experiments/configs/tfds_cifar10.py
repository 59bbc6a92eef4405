"""cifar10 from tensorflow-datasets (prepared locally; nothing is downloaded here).

python -m experiments.run --config experiments/configs/tfds_cifar10.py --out runs/cifar10
"""

from common import tfds_experiment  # experiments/configs/common.py, beside this file


def get_config():
    return tfds_experiment("cifar10", (32, 32))

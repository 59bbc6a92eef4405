"""fashion_mnist from tensorflow-datasets (prepared locally; nothing is downloaded here).

    python -m experiments.run --config experiments/configs/tfds_fashion_mnist.py \
        --out runs/fashion_mnist
"""

from common import tfds_experiment  # experiments/configs/common.py, beside this file


def get_config():
    return tfds_experiment("fashion_mnist", None, model="mnist_cnn", layer="relu2")

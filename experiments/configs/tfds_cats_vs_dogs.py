"""cats_vs_dogs from tensorflow-datasets (prepared locally; nothing is downloaded here).

    python -m experiments.run --config experiments/configs/tfds_cats_vs_dogs.py \
        --out runs/cats_vs_dogs
"""

from experiments.configs.common import tfds_experiment


def get_config():
    return tfds_experiment("cats_vs_dogs", (96, 96))

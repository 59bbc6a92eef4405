"""cats_vs_dogs from tensorflow-datasets (prepared locally; nothing is downloaded here).

    python -m experiments.run --config experiments/configs/tfds_cats_vs_dogs.py \
        --out runs/cats_vs_dogs
"""

from common import tfds_experiment  # experiments/configs/common.py, beside this file


def get_config():
    return tfds_experiment("cats_vs_dogs", (96, 96))

"""colorectal_histology from tensorflow-datasets (prepared locally; nothing is downloaded here).

    python -m experiments.run --config experiments/configs/tfds_colorectal_histology.py \
        --out runs/colorectal_histology
"""

from common import tfds_experiment  # experiments/configs/common.py, beside this file


def get_config():
    return tfds_experiment("colorectal_histology", (96, 96))

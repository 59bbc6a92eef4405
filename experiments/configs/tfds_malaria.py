"""malaria from tensorflow-datasets (prepared locally; nothing is downloaded here).

python -m experiments.run --config experiments/configs/tfds_malaria.py --out runs/malaria
"""

from common import tfds_experiment  # experiments/configs/common.py, beside this file


def get_config():
    return tfds_experiment("malaria", (96, 96))

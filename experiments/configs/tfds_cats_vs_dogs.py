"""cats_vs_dogs from tensorflow-datasets (prepared locally as array_record; no download here).

    python -m experiments.run --config experiments/configs/tfds_cats_vs_dogs.py --out runs/cats_vs_dogs

Prepare the data once on a machine with network:
`tfds build cats_vs_dogs --file_format=array_record` (set TFDS_DATA_DIR or pass data_dir).
"""

from ifa_jax.experiment import Config
from ifa_jax.train import TrainConfig


def get_config() -> Config:
    return Config(
        name="cats_vs_dogs",
        dataset="tfds:cats_vs_dogs",
        image_size=(96, 96),
        model="resnet18",
    model_kwargs=(("width", 32),),
        layer="stage4",
        train=TrainConfig(epochs=10, batch_size=128, lr=1e-3, seed=0),
        batch_size=128,
    )

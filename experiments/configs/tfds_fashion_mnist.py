"""fashion_mnist from tensorflow-datasets (prepared locally as array_record; no download here).

    python -m experiments.run --config experiments/configs/tfds_fashion_mnist.py --out runs/fashion_mnist

Prepare the data once on a machine with network:
`tfds build fashion_mnist --file_format=array_record` (set TFDS_DATA_DIR or pass data_dir).
"""

from ifa_jax.experiment import Config
from ifa_jax.train import TrainConfig


def get_config() -> Config:
    return Config(
        name="fashion_mnist",
        dataset="tfds:fashion_mnist",
        image_size=None,
        model="mnist_cnn",

        layer="conv2",
        train=TrainConfig(epochs=10, batch_size=128, lr=1e-3, seed=0),
        batch_size=128,
    )

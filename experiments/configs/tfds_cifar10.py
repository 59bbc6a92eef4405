"""cifar10 from tensorflow-datasets (prepared locally as array_record; no download here).

    python -m experiments.run --config experiments/configs/tfds_cifar10.py --out runs/cifar10

Prepare the data once on a machine with network:
`tfds build cifar10 --file_format=array_record` (set TFDS_DATA_DIR or pass data_dir).
"""

from ifa_jax.experiment import Config
from ifa_jax.train import TrainConfig


def get_config() -> Config:
    return Config(
        name="cifar10",
        dataset="tfds:cifar10",
        image_size=(32, 32),
        model="resnet18",
    model_kwargs=(("width", 32),),
        layer="stage4",
        train=TrainConfig(epochs=10, batch_size=128, lr=1e-3, seed=0),
        batch_size=128,
    )

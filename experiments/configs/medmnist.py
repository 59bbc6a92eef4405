"""A MedMNIST .npz file you already have (e.g. dermamnist.npz, organmnist3d.npz).

    python -m experiments.run --config experiments/configs/medmnist.py \
        --set dataset=medmnist:/path/to/dermamnist.npz --out runs/dermamnist

2-D sets use the small ResNet at stage4 with the paper's medical scale ratio 1.5; for 3-D
sets add --set model=convnet --set layer=conv2.
"""

from ifa_jax.runner import Config
from ifa_jax.runner.train import TrainConfig


def get_config() -> Config:
    return Config(
        name="medmnist",
        dataset="medmnist:dermamnist.npz",
        model="resnet18",
        model_kwargs=(("width", 32),),
        layer="stage4",
        train=TrainConfig(epochs=10, batch_size=128, lr=1e-3, seed=0),
        batch_size=128,
        scale_ratio=1.5,
    )

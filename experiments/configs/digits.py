"""scikit-learn's 1,797 8x8 digits with a small 3-layer ConvNet (no network needed).

    python -m experiments.run --config experiments/configs/digits.py --out runs/digits

About 15 s of training to ~98% validation accuracy; the feature grid of conv3 is 8x8.
"""

from ifa_jax.runner import Config
from ifa_jax.train import TrainConfig


def get_config() -> Config:
    return Config(
        name="digits",
        dataset="sklearn_digits",
        validation_size=0.2,
        model="convnet",
        model_kwargs=(("features", (32, 64, 128)),),
        layer="conv3",
        train=TrainConfig(epochs=30, batch_size=64, lr=2e-3, seed=0),
        batch_size=128,
        faithfulness_samples=32,
    )

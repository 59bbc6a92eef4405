"""Tests of train(state_path=...): per-epoch training state, exact resume after a kill."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax.runner import train as T
from ifa_jax.runner.data import Dataset
from ifa_jax.runner.models import ConvNet

CONFIG = T.TrainConfig(
    epochs=3, batch_size=16, lr=3e-2, warmup_epochs=0.5, restore_best=False, progress=False
)


class BnDropNet(nn.Module):
    """Conv, BatchNorm, dropout, pooled dense head: batch_stats and dropout keys to resume."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Conv(4, (3, 3))(x))
        x = nn.relu(x)
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(4)(jnp.mean(x, axis=(1, 2)))


def _data(n: int, seed: int) -> Dataset:
    """4 classes of noisy 6x6 two-channel images; the class sets one channel's brightness."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int32) % 4
    x = rng.uniform(0.0, 0.5, (n, 6, 6, 2))
    x[..., 0] += 0.1 * y[:, None, None]
    return Dataset(x.astype(np.float32), y, 4, f"resume{seed}")


@pytest.fixture(scope="module")
def data():
    return _data(64, 0), _data(32, 1)


class Killed(RuntimeError):
    pass


def _kill_after(epoch: int):
    def callback(e, metrics):
        if e == epoch:
            raise Killed(f"simulated kill after epoch {e}")

    return callback


def _assert_same_run(a, b):
    (va, ha), (vb, hb) = a, b
    assert jax.tree.structure(va) == jax.tree.structure(vb)
    for x, y in zip(jax.tree.leaves(va), jax.tree.leaves(vb)):
        np.testing.assert_array_equal(x, y)
    for field in (
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "best_epoch",
        "stopped_early",
    ):
        assert getattr(ha, field) == getattr(hb, field), field
    assert len(ha.epoch_seconds) == len(hb.epoch_seconds)


@pytest.mark.parametrize(
    "model",
    [ConvNet(features=(4,), num_classes=4), BnDropNet()],
    ids=["convnet", "batchnorm-dropout"],
)
def test_resume_after_a_kill_equals_the_uninterrupted_run(model, data, tmp_path):
    path = tmp_path / "run" / "state.msgpack"
    whole = T.train(model, *data, CONFIG)
    with pytest.raises(Killed):
        T.train(model, *data, CONFIG, state_path=path, callback=_kill_after(2))
    seen = []
    resumed = T.train(model, *data, CONFIG, state_path=path, callback=lambda e, m: seen.append(e))
    assert seen == [3]  # epochs 1-2 came from the file
    _assert_same_run(resumed, whole)
    if isinstance(model, BnDropNet):
        assert set(resumed[0]) == {"params", "batch_stats"}
    # The file stays after the end; calling again returns the finished run without training.
    again = T.train(model, *data, CONFIG, state_path=path, callback=lambda e, m: seen.append(e))
    assert seen == [3]
    _assert_same_run(again, whole)


def test_resume_keeps_the_early_stopping_bookkeeping(data, tmp_path):
    # lr=0: flat validation accuracy, so the best epoch is 1 and patience=2 stops after 3 of 4.
    model = ConvNet(features=(4,), num_classes=4)
    cfg = dataclasses.replace(CONFIG, epochs=4, lr=0.0, patience=2, restore_best=True)
    whole = T.train(model, *data, cfg)
    assert whole[1].stopped_early and whole[1].best_epoch == 1 and len(whole[1].train_loss) == 3
    path = tmp_path / "state.msgpack"
    with pytest.raises(Killed):
        T.train(model, *data, cfg, state_path=path, callback=_kill_after(2))
    # restore_best only changes what is returned, so it may differ on resume.
    last = T.train(model, *data, dataclasses.replace(cfg, restore_best=False), state_path=path)
    _assert_same_run(T.train(model, *data, cfg, state_path=path), whole)
    assert last[1].stopped_early and len(last[1].train_loss) == 3


@pytest.fixture(scope="module")
def one_epoch_state(data, tmp_path_factory):
    """(model, state file written by a 1-epoch run of a 2-epoch config, that config)."""
    model = ConvNet(features=(4,), num_classes=4)
    cfg = dataclasses.replace(CONFIG, epochs=2)
    path = tmp_path_factory.mktemp("state") / "state.msgpack"
    with pytest.raises(Killed):
        T.train(model, *data, cfg, state_path=path, callback=_kill_after(1))
    return model, path, cfg


@pytest.mark.parametrize(
    "change, match",
    [
        ({"lr": 1e-2}, r"lr: file 0\.03 vs now 0\.01"),
        ({"batch_size": 8}, "batch_size: file 16 vs now 8"),
        ({"seed": 1}, "seed: file 0 vs now 1"),
        ({"epochs": 3}, "epochs: file 2 vs now 3"),
    ],
)
def test_state_from_another_config_is_refused(one_epoch_state, data, change, match):
    model, path, cfg = one_epoch_state
    with pytest.raises(T.TrainStateFileError, match=match) as info:
        T.train(model, *data, dataclasses.replace(cfg, **change), state_path=path)
    assert str(path) in str(info.value) and "delete" in str(info.value)


def test_state_from_another_model_or_data_is_refused(one_epoch_state, data):
    model, path, cfg = one_epoch_state
    with pytest.raises(T.TrainStateFileError, match="model: file .* vs now"):
        T.train(ConvNet(features=(8,), num_classes=4), *data, cfg, state_path=path)
    with pytest.raises(T.TrainStateFileError, match="train_ds: file resume0: 64 examples"):
        T.train(model, data[0].subset(np.arange(48)), data[1], cfg, state_path=path)
    # A different starting point counts as another run too.
    start = T.init_variables(model, (6, 6, 2), key=jax.random.key(7))
    with pytest.raises(T.TrainStateFileError, match="initial_variables"):
        T.train(model, *data, cfg, state_path=path, variables=start)


def test_corrupt_or_foreign_state_file_names_the_file_and_the_fix(one_epoch_state, data, tmp_path):
    model, good, cfg = one_epoch_state
    blob = good.read_bytes()
    cases = {
        "truncated.msgpack": (blob[: len(blob) // 2], "corrupt or truncated"),
        "junk.msgpack": (b"\xc1 not msgpack", "corrupt or truncated"),
    }
    for name, (content, match) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(T.TrainStateFileError, match=match) as info:
            T.train(model, *data, cfg, state_path=path)
        assert name in str(info.value) and "delete" in str(info.value)
    ckpt = tmp_path / "weights.msgpack"  # a save_checkpoint file passed by mistake
    T.save_checkpoint(ckpt, T.init_variables(model, (6, 6, 2), key=jax.random.key(0)))
    with pytest.raises(T.TrainStateFileError, match="not a training-state file"):
        T.train(model, *data, cfg, state_path=ckpt)

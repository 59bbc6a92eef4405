"""Tests of ifa_jax.runner.train: learning, masking, BatchNorm, early stop, seeds, checkpoints."""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ifa_jax.runner import train as T
from ifa_jax.runner.data import Dataset
from ifa_jax.runner.models import ConvNet, NestedNet, ResNet

MODEL = ConvNet(features=(4, 8), num_classes=4)
CONFIG = T.TrainConfig(epochs=4, batch_size=16, lr=3e-2, warmup_epochs=0.5, progress=False)


def _levels(n: int, seed: int) -> Dataset:
    """4 classes of noisy 6x6 two-channel images: channel k // 2 is bright, odd k are striped."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int32) % 4
    x = rng.uniform(0.0, 0.3, (n, 6, 6, 2))
    x[np.arange(n), :, :, y // 2] += 0.6
    x[y % 2 == 1, ::2] *= 0.2  # horizontal stripes
    return Dataset(x.astype(np.float32), y, 4, f"levels{seed}")


@pytest.fixture(scope="module")
def data():
    return _levels(96, 0), _levels(40, 1)


@pytest.fixture(scope="module")
def trained(data):
    return T.train(MODEL, *data, CONFIG)


def _equal(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda u, v: np.array_equal(u, v), a, b)))


def test_train_learns_and_records_history(trained, data):
    variables, history = trained
    assert len(history.train_loss) == len(history.val_accuracy) == len(history.epoch_seconds) == 4
    assert history.train_loss[-1] < history.train_loss[0]
    assert max(history.val_accuracy) >= 0.9
    assert not history.stopped_early and history.as_dict()["best_epoch"] == history.best_epoch
    # restore_best: the returned variables are those of the best validation epoch.
    got = T.evaluate(MODEL, variables, data[1], batch_size=16)
    assert got["accuracy"] == pytest.approx(max(history.val_accuracy))
    assert got["accuracy"] == history.val_accuracy[history.best_epoch - 1]


def _template(model):
    """Abstract variables (shapes and dtypes only) for inputs (B, 6, 6, 2)."""
    return jax.eval_shape(lambda: T.init_variables(model, (6, 6, 2), key=jax.random.key(0)))


def test_same_seed_reproduces_and_the_best_checkpoint_is_written(trained, data, tmp_path):
    path = tmp_path / "ckpt" / "best.msgpack"
    again, history = T.train(MODEL, *data, CONFIG, checkpoint_path=path)
    assert _equal(again, trained[0]) and history.val_loss == trained[1].val_loss
    assert _equal(T.load_checkpoint(path, _template(MODEL)), again)


def test_other_seed_differs(trained, data):
    other, _ = T.train(MODEL, *data, dataclasses.replace(CONFIG, seed=1, epochs=1))
    assert not _equal(other["params"]["conv1"]["kernel"], trained[0]["params"]["conv1"]["kernel"])


def test_evaluate_ignores_padding_rows(trained, data):
    variables, _ = trained
    val = data[1]
    logits = MODEL.apply(variables, val.x)
    ref_loss = optax.softmax_cross_entropy_with_integer_labels(logits, val.y).mean()
    ref_acc = np.mean(np.argmax(logits, -1) == val.y)
    for bs in (40, 16, 64):  # no padding, 8 padding rows, 24 padding rows
        got = T.evaluate(MODEL, variables, val, batch_size=bs)
        assert got["count"] == 40
        assert got["loss"] == pytest.approx(float(ref_loss), rel=1e-5)
        assert got["accuracy"] == pytest.approx(float(ref_acc))


def test_padding_rows_do_not_change_the_training_step(data):
    variables = T.init_variables(MODEL, (6, 6, 2), key=jax.random.key(0))
    tx = optax.adamw(1e-2)
    state = T.TrainState(
        step=0,
        apply_fn=MODEL.apply,
        params=variables["params"],
        tx=tx,
        opt_state=tx.init(variables["params"]),
        model_state={},
    )
    step = T._make_train_step(has_train=False, label_smoothing=0.0)
    x, y = data[0].x[:8].copy(), data[0].y[:8].copy()
    mask = np.arange(8) < 5
    rng = np.random.default_rng(0)
    results = []
    for _ in range(2):  # different garbage in the 3 padding rows
        x[5:], y[5:] = rng.random((3, 6, 6, 2)), rng.integers(0, 4, 3)
        new_state, sums = step(state, x, y, mask, jax.random.key(0))
        results.append((new_state.params, sums))
    assert _equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert float(results[0][1][2]) == 5.0
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), results[0][0], state.params)
    assert max(jax.tree.leaves(moved)) > 0


def test_batchnorm_model_updates_batch_stats_and_evaluates(data):
    model = ResNet(num_classes=4, width=4, stage_sizes=(1,))
    init = T.init_variables(model, (6, 6, 2), key=jax.random.key(0))
    cfg = dataclasses.replace(CONFIG, epochs=1)
    variables, history = T.train(model, *data, cfg)
    assert set(variables) == {"params", "batch_stats"}
    mean = variables["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(mean, init["batch_stats"]["stem_bn"]["mean"])
    got = T.evaluate(model, variables, data[1], batch_size=16)
    assert got["accuracy"] == pytest.approx(history.val_accuracy[0])


def test_early_stopping_on_flat_validation_accuracy(data, capsys):
    cfg = dataclasses.replace(CONFIG, epochs=5, lr=0.0, patience=1, progress=True)
    seen = []
    _, history = T.train(MODEL, *data, cfg, callback=lambda e, m: seen.append((e, m)))
    assert len(history.val_accuracy) == 2 and history.stopped_early and history.best_epoch == 1
    assert [e for e, _ in seen] == [1, 2] and "val_accuracy" in seen[0][1]
    assert "epoch 2: train_loss=" in capsys.readouterr().out


def test_train_rejects_inconsistent_setups(data):
    with pytest.raises(ValueError, match="4 classes"):
        T.train(ConvNet(features=(4,), num_classes=2), *data, CONFIG)
    with pytest.raises(ValueError, match="fewer than batch_size=128"):
        T.train(MODEL, *data, dataclasses.replace(CONFIG, batch_size=128))
    with pytest.raises(ValueError, match="needs a validation set"):
        T.train(MODEL, data[0], None, dataclasses.replace(CONFIG, patience=2))


@pytest.mark.parametrize(
    "field, value", [("epochs", 0), ("label_smoothing", 1.0), ("lr", -1.0), ("patience", 0)]
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        T.TrainConfig(**{field: value})


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def test_checkpoint_write_is_atomic(tmp_path, trained, monkeypatch):
    path = tmp_path / "model.msgpack"
    good = trained[0]
    T.save_checkpoint(path, good)
    zeros = jax.tree.map(jnp.zeros_like, good)

    def crash(fd):  # the new bytes are in the temporary file when the "crash" happens
        raise OSError("simulated crash during write")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="simulated crash"):
        T.save_checkpoint(path, zeros)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.msgpack"]  # no temporary file left behind
    assert _equal(T.load_checkpoint(path, zeros), good)
    T.save_checkpoint(path, zeros)  # and a write that completes replaces the file
    assert _equal(T.load_checkpoint(path, good), zeros)


def test_loading_another_models_checkpoint_names_paths_and_shapes(tmp_path, trained):
    path = tmp_path / "convnet.msgpack"
    T.save_checkpoint(path, trained[0])
    with pytest.raises(
        T.CheckpointMismatchError,
        match=r"params/conv2/kernel: checkpoint \(3, 3, 4, 8\) float32 vs "
        r"template \(3, 3, 4, 16\)",
    ):
        T.load_checkpoint(path, _template(ConvNet(features=(4, 16), num_classes=4)))
    with pytest.raises(T.CheckpointMismatchError) as info:
        T.load_checkpoint(path, _template(NestedNet(num_classes=4)))
    message = str(info.value)
    assert "missing params/backbone/conv1/kernel (3, 3, 2, 8)" in message
    assert "unexpected params/conv1/kernel (3, 3, 2, 4)" in message


def test_load_checkpoint_missing_or_corrupt_file(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match=r"absent\.msgpack"):
        T.load_checkpoint(tmp_path / "absent.msgpack", trained[0])
    (tmp_path / "junk.msgpack").write_bytes(b"\xc1 not msgpack")
    with pytest.raises(ValueError, match="not a flax msgpack checkpoint"):
        T.load_checkpoint(tmp_path / "junk.msgpack", trained[0])


def test_orbax_checkpoint_folders_load_and_are_checked(tmp_path, trained):
    ocp = pytest.importorskip("orbax.checkpoint")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "orbax", trained[0])
    checkpointer.wait_until_finished()
    template = jax.eval_shape(lambda: trained[0])
    assert _equal(T.load_checkpoint(tmp_path / "orbax", template), trained[0])
    with pytest.raises(
        T.CheckpointMismatchError,
        match=r"params/conv2/kernel: checkpoint \(3, 3, 4, 8\) float32 vs "
        r"template \(3, 3, 4, 16\)",
    ):
        T.load_checkpoint(tmp_path / "orbax", _template(ConvNet(features=(4, 16), num_classes=4)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"is a folder but not a readable orbax checkpoint"):
        T.load_checkpoint(tmp_path / "empty", template)

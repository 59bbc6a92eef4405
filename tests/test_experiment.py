"""The experiment runner end to end on tiny configs, its run folder and its errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from experiments import run as run_cli
from ifa_jax import experiment
from ifa_jax.train import TrainConfig


def tiny(**changes) -> experiment.Config:
    base = dict(name="tiny", dataset="sklearn_digits", validation_size=0.2, model="convnet",
                model_kwargs=(("features", (8, 16)),), layer="conv2",
                train=TrainConfig(epochs=2, batch_size=128, lr=3e-3, progress=False),
                batch_size=128, methods=("gradcam", "hirescam"), subset_ratios=(0.25, 1.0),
                subset_modes=("top", "random"), max_classes=3, faithfulness_samples=4,
                sanity_samples=2)
    base.update(changes)
    return experiment.Config(**base)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    logs: list[str] = []
    results = experiment.run_experiment(tiny(), out, log=logs.append)
    return out, results, logs


@pytest.mark.slow
def test_run_writes_every_artifact(finished_run):
    out, results, logs = finished_run
    for name in ("config.json", "checkpoint.msgpack", "train.json", "evaluation.json",
                 "results.json", "report.md", "analysis/gradcam_train.npz",
                 "analysis/hirescam_validation.npz", "figures/cams.png",
                 "figures/subsets.png", "figures/consistency.png"):
        assert (out / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["name"] == "tiny" and "jax" in saved["versions"]
    summary = saved["consistency"]["summary"]
    assert set(summary) == {"gradcam", "hirescam"}
    r = summary["hirescam"]["common"]["mean_pearson"]
    assert r is not None and -1 <= r <= 1
    # The last ratio keeps every channel: exactly the plain accuracy.
    for curve in saved["subsets"].values():
        assert curve["accuracy"][-1] == curve["full_accuracy"]
    report = (out / "report.md").read_text()
    assert "| hirescam |" in report and "![" in report and "nan" not in report.lower()
    assert any(line.startswith("consistency:") for line in logs)


@pytest.mark.slow
def test_rerun_resumes_from_finished_stages(finished_run):
    out, results, _ = finished_run
    os.remove(out / "report.md")
    logs: list[str] = []
    again = experiment.run_experiment(tiny(), out, log=logs.append)
    assert any("train: loading" in line for line in logs)
    assert not any(line.startswith("analyse:") for line in logs)
    assert any("loaded evaluation.json" in line for line in logs)
    assert (out / "report.md").exists()
    assert again["consistency"]["summary"] == results["consistency"]["summary"]


@pytest.mark.slow
def test_run_folder_of_another_config_is_refused(finished_run, capsys):
    out, _, _ = finished_run
    with pytest.raises(FileExistsError, match=r"belongs to another config.*seed: 0 -> 1"):
        experiment.RunFolder(out, tiny(seed=1))


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "epochz": 3}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) 'epochz'; valid fields: name, "):
        experiment.load_config(bad)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"train": {"epoch": 3}}))
    with pytest.raises(ValueError, match=r"train: unknown field\(s\) 'epoch'.*epochs"):
        experiment.load_config(nested)
    with pytest.raises(ValueError, match="unknown field 'train.lrate'"):
        experiment.override(tiny(), "train.lrate=0.1")
    assert experiment.override(tiny(), "train.epochs=7").train.epochs == 7
    assert experiment.override(tiny(), "methods=('gradcam',)").methods == ("gradcam",)
    assert tiny(methods=("Grad-CAM++", "FullCAM")).methods == ("gradcam++", "hirescam")
    with pytest.raises(ValueError, match="unknown CAM method 'gradkam'"):
        tiny(methods=("gradkam",))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        experiment.load_config(tmp_path / "missing.py")
    # The CLI turns these into a one-line error and exit status 2.
    assert run_cli.main(["--config", str(bad), "--out", str(tmp_path / "o")]) == 2


def test_shipped_configs_load():
    folder = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")
    names = sorted(f for f in os.listdir(folder)
                   if f.endswith(".py") and f not in ("__init__.py", "common.py"))
    assert len(names) >= 8
    for name in names:
        config = experiment.load_config(os.path.join(folder, name))
        assert isinstance(config, experiment.Config), name


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write to the output folder"):
        experiment.RunFolder(blocker / "run", tiny())


@pytest.mark.slow
def test_single_class_dataset_reports_undefined_instead_of_nan(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 16), ("test", 8)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.zeros((n, 1), np.int64)
    path = tmp_path / "one.npz"
    np.savez(path, **arrays)
    config = tiny(dataset=f"medmnist:{path}", methods=("hirescam",), subset_modes=("top",),
                  faithfulness_samples=0, sanity_samples=0,
                  train=TrainConfig(epochs=1, batch_size=16, progress=False), batch_size=16)
    experiment.run_experiment(config, tmp_path / "run", log=lambda s: None)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "AUROC is undefined for hirescam on class(es) 0" in report
    assert "nan" not in report.lower()


@pytest.mark.slow
def test_tfds_experiment_runs_on_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = tiny(dataset="tfds:mnist", model="convnet", methods=("gradcam",),
                  subset_modes=("top",), faithfulness_samples=2, sanity_samples=0,
                  train=TrainConfig(epochs=1, batch_size=16, progress=False), batch_size=16)
    with tfds.testing.mock_data(num_examples=40):
        results = experiment.run_experiment(config, tmp_path / "run", log=lambda s: None)
    assert results["analysis"]["gradcam"]["train"]["class_counts"] is not None
    assert (tmp_path / "run" / "figures" / "cams.png").exists()

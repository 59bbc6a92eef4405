"""The experiment runner end to end on tiny configs, its run folder and its errors."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import run as run_cli
from ifa_jax import io, runner
from ifa_jax.runner import stages
from ifa_jax.runner.folder import config_digest
from ifa_jax.runner.train import TrainConfig
from tests.figure_checks import figure_problems


def tiny(**changes) -> runner.Config:
    base = {
        "name": "tiny",
        "dataset": "sklearn_digits",
        "validation_size": 0.2,
        "model": "convnet",
        "model_kwargs": (("features", (8, 16)),),
        "layer": "conv2",
        "train": TrainConfig(epochs=2, batch_size=128, lr=3e-3, progress=False),
        "batch_size": 128,
        "methods": ("gradcam", "hirescam"),
        "subset_ratios": (0.25, 1.0),
        "subset_modes": ("top", "random"),
        "max_classes": 3,
        "faithfulness_samples": 4,
        "sanity_samples": 2,
        # Two cheap metrics; tests/test_comparison.py runs the evaluation on all of them.
        "comparison_metrics": ("average_drop", "deletion_auc"),
    }
    base.update(changes)
    return runner.Config(**base)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    logs: list[str] = []
    results = runner.run(tiny(), out, log=logs.append)
    return out, results, logs


@pytest.mark.slow
def test_run_writes_every_artifact(finished_run):
    out, results, logs = finished_run
    # The 2-epoch model leaves classes without a correctly classified sample: the run logs
    # them (a line per split, not a Python warning) and results.json lists them.
    missing = results["analysis"]["gradcam"]["train"]["missing_classes"]
    assert missing and any(
        line.startswith("analyse train: ") and str(missing) in line for line in logs
    )
    for name in (
        "config.json",
        "checkpoint.msgpack",
        "train.json",
        "results.json",
        "report.md",
        "analysis/gradcam_train.npz",
        "manifest.json",
        "evaluation/consistency.json",
        "evaluation/consistency.npz",
        "analysis/hirescam_validation.npz",
        "figures/cams.png",
        "figures/subsets.png",
        "figures/consistency.png",
    ):
        assert (out / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["name"] == "tiny" and "jax" in saved["versions"]
    summary = saved["consistency"]["summary"]
    assert set(summary) == {"gradcam", "hirescam"}
    # Class 0's r equals Pearson's r of the stored levels against the stored logits, and
    # the summary is the mean over the evaluated classes.
    per_class = saved["consistency"]["per_class"]["hirescam"]
    with np.load(out / "evaluation" / "consistency.npz") as z:
        want = np.corrcoef(z["hirescam common"], z["logit"])[0, 1]
    assert per_class["0"]["common"]["pearson"] == pytest.approx(want, rel=1e-5)
    assert summary["hirescam"]["common"]["mean_pearson"] == pytest.approx(
        np.mean([row["common"]["pearson"] for row in per_class.values()])
    )
    # The jvp path's common level covers all 10 classes and agrees with the vjp path's on
    # the 3 classes both evaluate.
    every = saved["consistency_all_classes"]
    assert every["classes"] == 10 and every["methods"] == ["gradcam", "hirescam"]
    for m in ("gradcam", "hirescam"):
        for c in ("0", "1", "2"):
            assert every["per_class"][m][c]["common"]["pearson"] == pytest.approx(
                saved["consistency"]["per_class"][m][c]["common"]["pearson"], abs=1e-5
            )
    assert "Consistency on every class" in (out / "report.md").read_text()
    # The method comparison scores both methods on the faithfulness_samples images.
    compared = saved["comparison"]
    assert compared["samples"] == 4 and list(compared["methods"]) == ["gradcam", "hirescam"]
    stored = json.loads((out / "evaluation" / "comparison.json").read_text())["numbers"]
    assert stored["methods"] == compared["methods"]
    assert "## Method comparison" in (out / "report.md").read_text()
    assert (out / "figures" / "comparison.png").exists()
    # The last ratio keeps every channel: exactly the plain accuracy.
    for curve in saved["subsets"].values():
        assert curve["accuracy"][-1] == curve["full_accuracy"]
    report = (out / "report.md").read_text()
    assert "| hirescam |" in report and "![" in report and "nan" not in report.lower()
    assert any(line.startswith("consistency:") for line in logs)


@pytest.mark.slow
def test_compare_command_runs_only_the_comparison(finished_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(finished_run[0], out)
    config = out / "config.json"  # the run's own config, read back as a JSON config
    assert runner.main(["compare", "--config", str(config), "--out", str(out)]) == 0
    logs = capsys.readouterr().out
    assert "train: loading" in logs and "loaded evaluation/comparison.json" in logs
    assert "evaluate: loaded evaluation/consistency.json" not in logs
    report = (out / "report.md").read_text()
    assert "## Method comparison" in report and "## Consistency" not in report
    assert json.loads((out / "results.json").read_text())["figures"] == {
        "comparison": "figures/comparison.png"
    }


@pytest.mark.slow
def test_rerun_resumes_and_rewrites_identical_files(finished_run):
    out, results, _ = finished_run
    before = {name: (out / name).read_bytes() for name in ("report.md", "results.json")}
    os.remove(out / "report.md")
    os.remove(out / "figures" / "consistency.png")
    logs: list[str] = []
    again = runner.run(tiny(), out, log=logs.append)
    assert any("train: loading" in line for line in logs)
    assert not any(line.startswith("analyse:") for line in logs)
    assert any("loaded evaluation/consistency.json" in line for line in logs)
    # Every figure and section is rebuilt from the files on disk, byte for byte.
    for name, content in before.items():
        assert (out / name).read_bytes() == content, name
    assert (out / "figures" / "consistency.png").exists()
    assert again["figures"]["consistency"] == "figures/consistency.png"
    assert "## Activation level vs logit (class 0)" in before["report.md"].decode()


@pytest.mark.slow
def test_evaluation_samples_are_stratified(finished_run):
    out, results, _ = finished_run
    labels = stages.load_analysis(str(out / "analysis" / "gradcam_validation.npz"))[1]["label"]
    ctx = stages.RunContext(tiny(), None, None, None, print)  # type: ignore[arg-type]
    ctx.analyses = {"gradcam": {"validation": (None, {"label": labels})}}  # type: ignore
    idx = ctx.sample_indices(tiny().figure_samples)
    assert sorted(labels[idx[:10]]) == list(range(10))  # the digits split has 10 classes
    assert "stratified by class with seed 0" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("train.epochs=two", r"train: field 'epochs' must be int; got 'two'"),
        ("train.epochs=1.5", r"field 'epochs' must be int; got 1.5"),
        ("batch_size=abc", r"field 'batch_size' must be int; got 'abc'"),
        ("scale_ratio=abc", r"field 'scale_ratio' must be float; got 'abc'"),
        ("max_classes=two", r"field 'max_classes' must be int or None"),
        ("subset_ratios=(0.5, 2.0)", r"subset_ratios must be shares in \(0, 1\]"),
        ("subset_modes=freq", r"subset_modes must be among top, diff_top"),
        ("scale_hi_percentile=20", r"scale_lo_percentile < scale_hi_percentile"),
        ("batch_size=0", r"batch_size must be >= 1"),
        ("methods=gradcam,refinecam", r"refinecam is a method of kind 'layers'"),
        ("method_options.xgradcam.eps=abc", r"not among methods"),
    ],
)
def test_override_checks_every_field(assignment, message):
    with pytest.raises(ValueError, match=message):
        runner.override(tiny(), assignment)


def test_override_reads_method_lists():
    assert runner.override(tiny(), "methods=gradcam").methods == ("gradcam",)
    assert runner.override(tiny(), "methods=gradcam, HiResCAM").methods == ("gradcam", "hirescam")


def test_unknown_layer_fails_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"field 'layer': layer 'conv9' not found; layers: "):
        runner.run(tiny(layer="conv9"), out, log=lambda s: None)
    assert not out.exists()


def test_overwrite_never_deletes_a_folder_the_runner_did_not_make(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "data.npz").write_bytes(b"precious")
    (folder / "my_notes").write_text("notes")
    # A config.json of the user's own (even one with our fields) does not make it ours.
    (folder / "config.json").write_text(json.dumps(tiny().to_dict()))
    for overwrite in (False, True):
        with pytest.raises(
            FileExistsError,
            match=r"is not a run folder.*nothing was written "
            r"or deleted",
        ):
            runner.RunFolder(folder, tiny(), overwrite=overwrite)
    assert sorted(os.listdir(folder)) == ["config.json", "data.npz", "my_notes"]
    assert (folder / "data.npz").read_bytes() == b"precious"


def test_overwrite_clears_only_what_the_runner_wrote(tmp_path):
    folder = tmp_path / "run"
    with runner.RunFolder(folder, tiny(), log=lambda s: None) as run:
        run.write_json("evaluation/sanity.json", {"x": 1})
        run.write_json("analysis/gradcam_train.npz", {"x": 1})
    (folder / "notes.txt").write_text("mine")
    (folder / "evaluation" / "mine.txt").write_text("mine")  # beside the runner's files
    with runner.RunFolder(folder, tiny(seed=1), overwrite=True, log=lambda s: None):
        pass
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "evaluation" / "mine.txt").read_text() == "mine"
    assert not (folder / "evaluation" / "sanity.json").exists()
    assert not (folder / "analysis" / "gradcam_train.npz").exists()
    assert json.loads((folder / "config.json").read_text())["seed"] == 1


def test_outputs_of_another_config_are_recomputed_even_without_config_json(tmp_path):
    logs: list[str] = []
    with runner.RunFolder(tmp_path / "run", tiny(), log=logs.append) as run:
        run.write_json("evaluation/subsets.json", {"x": 1})
    os.remove(tmp_path / "run" / "config.json")
    with runner.RunFolder(tmp_path / "run", tiny(subset_ratios=(0.5, 1.0)), log=logs.append) as run:
        assert not run.valid("evaluation/subsets.json")
    assert "computed from another config or plug-in code" in logs[-1]


def test_manifest_rejects_damaged_files_and_other_checkpoints(tmp_path):
    logs: list[str] = []
    with runner.RunFolder(tmp_path / "run", tiny(), log=logs.append) as run:
        run.write_json("evaluation.json", {"x": 1})
        assert run.valid("evaluation.json")
        run.checkpoint_digest = "another model"
        assert not run.valid("evaluation.json")
        assert "computed from another checkpoint" in logs[-1]
        run.checkpoint_digest = None
        (tmp_path / "run" / "evaluation.json").write_text('{"x": 2}')
        assert not run.valid("evaluation.json")
        assert "does not match its recorded checksum" in logs[-1]
        (tmp_path / "run" / "train.json").write_text("{}")
        assert not run.valid("train.json")
        assert "has no recorded checksum" in logs[-1]


def test_second_runner_on_a_folder_is_refused(tmp_path):
    with (
        runner.RunFolder(tmp_path / "run", tiny(), log=lambda s: None),
        pytest.raises(
            runner.RunFolderBusyError, match=rf"in use by another runner \(process {os.getpid()}\)"
        ),
    ):
        runner.RunFolder(tmp_path / "run", tiny(), log=lambda s: None)
    with runner.RunFolder(tmp_path / "run", tiny(), log=lambda s: None):
        pass  # released on exit


def test_folders_opened_concurrently_do_not_collide(tmp_path):
    def open_one(i):
        with runner.RunFolder(tmp_path / f"run{i % 3}_{i}", tiny(), log=lambda s: None):
            return i

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(open_one, range(24))) == list(range(24))


def test_stale_temporaries_are_removed_on_open(tmp_path):
    folder = tmp_path / "run"
    with runner.RunFolder(folder, tiny(), log=lambda s: None):
        pass
    stale = folder / "analysis" / f".gradcam_train.npz{io.TEMP_MARK}3a207qgx.npz"
    stale.write_bytes(b"partial")
    logs: list[str] = []
    with runner.RunFolder(folder, tiny(), log=logs.append):
        pass
    assert not stale.exists()
    assert any("left by an interrupted write" in line for line in logs)


def test_non_finite_weights_are_named():
    variables = {"params": {"dense": {"kernel": np.array([1.0, np.nan]), "bias": np.ones(2)}}}
    with pytest.raises(
        FloatingPointError,
        match=r"ckpt has non-finite weights in 1 of 2 "
        r"arrays \(\['params'\]\['dense'\]"
        r"\['kernel'\]\): training diverged",
    ):
        stages.check_finite_weights(variables, "ckpt")
    stages.check_finite_weights({"params": {"w": np.ones(3)}}, "ckpt")


@pytest.mark.slow
def test_damaged_stage_outputs_are_recomputed(finished_run, tmp_path):
    out, results, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    npz = copy / "analysis" / "hirescam_validation.npz"
    npz.write_bytes(npz.read_bytes()[:100])  # truncated
    (copy / "evaluation" / "subsets.json").write_text("{not json")
    logs: list[str] = []
    again = runner.run(tiny(), copy, log=logs.append)
    assert any("train: loading" in line for line in logs)
    assert any("hirescam_validation.npz does not match" in line for line in logs)
    assert any(line.startswith("analyse:") and "validation" in line for line in logs)
    assert any("evaluate: subsets in" in line for line in logs)
    assert again["consistency"] == results["consistency"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(finished_run, tmp_path):
    _, results, _ = finished_run
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps(tiny().to_dict()))
    out = tmp_path / "run"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.run", "--config", str(config_path), "--out", str(out)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:  # kill it once the first epoch's training state is saved
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "train_state.msgpack").exists():
                break
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: no clean-up runs
        proc.wait()
    assert proc.returncode == -9, "the run ended before it could be killed"
    logs: list[str] = []
    again = runner.run(tiny(), out, log=logs.append)
    assert any("train: resuming from" in line or "train: loading" in line for line in logs)
    assert again["consistency"] == results["consistency"]
    assert again["subsets"] == results["subsets"]


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "epochz": 3}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) 'epochz'; valid fields: name, "):
        runner.load_config(bad)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"train": {"epoch": 3}}))
    with pytest.raises(ValueError, match=r"train: unknown field\(s\) 'epoch'.*epochs"):
        runner.load_config(nested)
    with pytest.raises(ValueError, match="unknown field 'train.lrate'"):
        runner.override(tiny(), "train.lrate=0.1")
    assert runner.override(tiny(), "train.epochs=7").train.epochs == 7
    with pytest.raises(ValueError, match=r"validation_size 1.0 as a share must be < 1"):
        tiny(validation_size=1.0)
    assert tiny(validation_size=1).validation_size == 1  # a count of one
    assert runner.override(tiny(), "methods=('gradcam',)").methods == ("gradcam",)
    assert tiny(methods=("Grad-CAM++", "FullCAM")).methods == ("gradcam++", "hirescam")
    with pytest.raises(ValueError, match="unknown CAM method 'gradkam'"):
        tiny(methods=("gradkam",))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runner.load_config(tmp_path / "missing.py")
    # The CLI turns these into a one-line error and exit status 2.
    assert run_cli.main(["--config", str(bad), "--out", str(tmp_path / "o")]) == 2


def test_shipped_configs_load():
    folder = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")
    names = sorted(
        f for f in os.listdir(folder) if f.endswith(".py") and f not in ("__init__.py", "common.py")
    )
    assert len(names) >= 8
    for name in names:
        config = runner.load_config(os.path.join(folder, name))
        assert isinstance(config, runner.Config), name


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write to the output folder"):
        runner.RunFolder(blocker / "run", tiny())


@pytest.mark.slow
def test_single_class_dataset_reports_undefined_instead_of_nan(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 16), ("test", 8)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.zeros((n, 1), np.int64)
    path = tmp_path / "one.npz"
    np.savez(path, **arrays)
    config = tiny(
        dataset=f"medmnist:{path}",
        methods=("hirescam",),
        subset_modes=("top",),
        faithfulness_samples=0,
        sanity_samples=0,
        train=TrainConfig(epochs=1, batch_size=16, progress=False),
        batch_size=16,
    )
    runner.run(config, tmp_path / "run", log=lambda s: None)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "AUROC is undefined for hirescam on class(es) 0" in report
    assert "nan" not in report.lower()


@pytest.mark.slow
def test_tfds_experiment_runs_on_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = tiny(
        dataset="tfds:mnist",
        model="convnet",
        methods=("gradcam",),
        subset_modes=("top",),
        faithfulness_samples=2,
        sanity_samples=0,
        train=TrainConfig(epochs=1, batch_size=16, progress=False),
        batch_size=16,
    )
    with tfds.testing.mock_data(num_examples=40):
        results = runner.run(config, tmp_path / "run", log=lambda s: None)
    _, samples = stages.load_analysis(str(tmp_path / "run" / "analysis" / "gradcam_train.npz"))
    assert len(samples["label"]) == 40  # every mock example analysed once
    assert sum(results["analysis"]["gradcam"]["train"]["class_counts"]) == samples["counted"].sum()
    assert (tmp_path / "run" / "figures" / "cams.png").exists()


PLUGIN = """
import flax.linen as nn
import numpy as np
from sklearn.datasets import load_digits

from ifa_jax.runner import data


class TinyCNN(nn.Module):
    num_classes: int
    width: int = 8

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.width, (3, 3), name="conv")(x))
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


def three_digits(seed, limit=240):
    d = load_digits()
    keep = np.flatnonzero(d.target < 3)[:limit]
    ds = data.Dataset(data.as_images(d.images[keep] / 16.0, spatial_ndim=2),
                      d.target[keep].astype(np.int32), 3, "three_digits")
    return data.split_dataset(ds, 0.25, seed=seed)
"""


@pytest.mark.slow
def test_cli_runs_a_plugin_model_from_another_folder_and_analyses_given_variables(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "my_models.py").write_text(PLUGIN)
    plugin = str(elsewhere / "my_models.py")
    config = {
        "name": "plugin",
        "dataset": f"{plugin}:three_digits",
        "dataset_kwargs": [["limit", 200]],
        "model": f"{plugin}:TinyCNN",
        "model_kwargs": [["width", 6]],
        "layer": "conv",
        "batch_size": 50,
        "train": {"epochs": 1, "batch_size": 50, "progress": False},
        "methods": ["gradcam"],
        "subset_ratios": [0.5, 1.0],
        "subset_modes": ["top"],
        "faithfulness_samples": 3,
        "sanity_samples": 0,
        "figure_samples": 3,
    }
    (elsewhere / "plugin.json").write_text(json.dumps(config))
    command = os.path.join(os.path.dirname(sys.executable), "ifa-jax")
    done = subprocess.run(
        [command, "run", "--config", "plugin.json", "--out", "out"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = (elsewhere / "out" / "report.md").read_text()
    assert f"model `{plugin}:TinyCNN` (trained here)" in report
    assert f"Dataset `{plugin}:three_digits`" in report
    # The trained checkpoint, analysed as given variables: nothing is trained.
    logs: list[str] = []
    given = runner.config_from_dict(
        config | {"variables": str(elsewhere / "out" / "checkpoint.msgpack")}
    )
    results = runner.run(given, tmp_path / "given", log=logs.append)
    assert not any(line.startswith("train: ") and " s, validation" in line for line in logs)
    assert any("train: none; analysing the variables" in line for line in logs)
    assert not (tmp_path / "given" / "checkpoint.msgpack").exists()
    trained = json.loads((elsewhere / "out" / "results.json").read_text())
    assert results["consistency"] == trained["consistency"]
    assert "(not trained here)" in (tmp_path / "given" / "report.md").read_text()


def test_plugin_errors_name_the_fix(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"model 'cnn' is not one of mnist_cnn, convnet, "
        r"resnet18, vit nor a plug-in",
    ):
        tiny(model="cnn")
    with pytest.raises(ValueError, match=r"dataset 'tfds' must be written 'tfds:<name>'"):
        tiny(dataset="tfds")
    (tmp_path / "m.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"has no 'CNN'; it defines x"):
        runner.registry.load_object(f"{tmp_path / 'm.py'}:CNN", "model")
    with pytest.raises(ValueError, match=r"cannot import 'no_such_pkg.models'.*PYTHONPATH"):
        runner.registry.load_object("no_such_pkg.models:CNN", "model")


@pytest.mark.slow
def test_an_evaluation_added_to_the_table_reaches_results_and_report(finished_run, tmp_path):
    out, _, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)

    def count_channels(ctx):
        return {"channels": int(ctx.summary.im_class.shape[1])}, {}

    def report_channels(ctx, numbers):
        return ["## Channels", "", f"The layer has {numbers['channels']} channels."]

    extra = runner.Evaluation("channels", 1, count_channels, report_channels)
    results = runner.run(tiny(), copy, log=lambda s: None, evaluations=(*runner.EVALUATIONS, extra))
    assert results["channels"] == {"channels": 16}
    assert json.loads((copy / "results.json").read_text())["channels"]["channels"] == 16
    assert "## Channels\n\nThe layer has 16 channels." in (copy / "report.md").read_text()
    assert json.loads((copy / "evaluation" / "channels.json").read_text())["version"] == 1


@pytest.mark.slow
def test_every_report_figure_is_readable(finished_run, tmp_path):
    """Each figure of the report, drawn from a finished run: no two texts overlap and every
    axis with tick labels has a label (tests/figure_checks.py)."""
    out, _, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    problems = {}

    def checked(figure):
        def draw(ctx):
            fig = figure.draw(ctx)
            if fig is not None:
                problems[figure.key] = figure_problems(fig)
            return fig

        return dataclasses.replace(figure, draw=draw)

    runner.run(tiny(), copy, log=lambda s: None, figures=tuple(map(checked, runner.FIGURES)))
    assert set(problems) == {f.key for f in runner.FIGURES}
    assert {k: v for k, v in problems.items() if v} == {}


@pytest.mark.slow
def test_report_explains_its_numbers(finished_run):
    """The tiny run's 2 epochs leave classes without a correctly classified sample: the
    report names them. Its layer conv2 comes before a ReLU, so G varies over the grid and
    GradCAM differs from HiResCAM: nothing is reported as coinciding (test_report has the
    case where they do)."""
    out, results, _ = finished_run
    text = (out / "report.md").read_text()
    assert results["consistency"]["coincide"] == [] and "coincide**" not in text
    missing = results["analysis"]["gradcam"]["train"]["missing_classes"]
    assert bool(missing) == ("**Classes without a counted sample** (train split: cl" in text)
    for words in ("Higher is better", "lower is better", "is by construction, not a defect"):
        assert words in text
    assert "| top, label |" in text and "randomised down to" in text


def test_bad_runs_fail_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(
        ValueError,
        match=r"'head' outputs \(1, 10\), not a feature grid.*"
        r"layers with one: conv1, relu1, conv2, relu2",
    ):
        runner.run(tiny(layer="head"), out, log=lambda s: None)
    with pytest.raises(FileNotFoundError, match=r"variables file .*nothere\.msgpack"):
        runner.run(tiny(variables=str(tmp_path / "nothere.msgpack")), out, log=lambda s: None)
    with pytest.raises(ValueError, match=r"config must be an ifa_jax.runner.Config, not a dict"):
        runner.run(tiny().to_dict(), out, log=lambda s: None)
    twice = (*runner.EVALUATIONS, runner.EVALUATIONS[0])
    with pytest.raises(ValueError, match=r"evaluation name\(s\) consistency appear more"):
        runner.run(tiny(), out, evaluations=twice, log=lambda s: None)
    assert not out.exists()


BAD_PLUGINS = """
import flax.linen as nn
import numpy as np
from ifa_jax.runner import data


class Net(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def gives_text(num_classes):
    return "a model"


def gives_class(num_classes):
    return Net


def mismatched(seed):
    rng = np.random.default_rng(seed)
    train = data.Dataset(rng.random((8, 8, 8, 1), np.float32), np.arange(8) % 2, 2, "train")
    val = data.Dataset(rng.random((4, 6, 6, 1), np.float32), np.arange(4) % 2, 2, "val")
    return train, val
"""


def test_plugin_mistakes_are_named(tmp_path):
    plugin = tmp_path / "bad.py"
    plugin.write_text(BAD_PLUGINS)
    good = {
        "dataset": "sklearn_digits",
        "model": f"{plugin}:Net",
        "layer": "conv",
        "model_kwargs": (),
    }
    for model, message in (
        (f"{plugin}:gives_text", r"gave a builtins.str, not a flax.linen"),
        (f"{plugin}:gives_class", r"gave the class Net, not a flax.linen"),
    ):
        with pytest.raises(ValueError, match=message):
            runner.run(tiny(**(good | {"model": model})), tmp_path / "o", log=print)
    with pytest.raises(
        ValueError,
        match=r"does not take the arguments \['num_classes', "
        r"'widht'\].*model_kwargs",
    ):
        runner.run(tiny(**(good | {"model_kwargs": (("widht", 3),)})), tmp_path / "o")
    with pytest.raises(
        ValueError,
        match=r"the train split has input_shape \(8, 8, 1\) but the "
        r"validation split \(6, 6, 1\)",
    ):
        runner.run(tiny(**(good | {"dataset": f"{plugin}:mismatched"})), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_config_files_of_the_wrong_kind_are_named(tmp_path):
    for name, text, message in (
        ("c.yaml", "name: x", r"neither \.py \(with get_config\(\)\) nor \.json"),
        ("c.json", "[1, 2]", r"holds a JSON list; it must hold an object"),
        ("d.json", '{"name": "x", // comment\n}', r"d\.json' is not valid JSON"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            runner.load_config(tmp_path / name)


@pytest.mark.slow
def test_overwrite_refuses_to_clear_the_variables_it_analyses(finished_run, tmp_path):
    out, _, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    os.symlink(copy, tmp_path / "link")
    # Named directly, through a link to the folder, or with the folder named through it.
    for variables, folder in (
        (copy / "checkpoint.msgpack", copy),
        (tmp_path / "link" / "checkpoint.msgpack", copy),
        (copy / "checkpoint.msgpack", tmp_path / "link"),
    ):
        with pytest.raises(ValueError, match=r"lie inside the run folder .* --overwrite would"):
            runner.run(tiny(variables=str(variables)), folder, overwrite=True, log=lambda s: None)
    assert (copy / "checkpoint.msgpack").exists()


def test_editing_a_plugin_changes_the_run_inputs(tmp_path):
    plugin = tmp_path / "bad.py"
    plugin.write_text(BAD_PLUGINS)
    config = tiny(model=f"{plugin}:Net", model_kwargs=(), layer="conv")
    assert runner.registry.plugin_sources(config) == [str(plugin)]
    before = runner.folder.config_digest(config, *runner.registry.plugin_sources(config))
    plugin.write_text(BAD_PLUGINS.replace("nn.Conv(4,", "nn.Conv(5,"))
    after = runner.folder.config_digest(config, *runner.registry.plugin_sources(config))
    assert before != after  # so every stage output of the old code is recomputed
    assert runner.registry.plugin_sources(tiny()) == []


def test_a_config_change_names_only_the_leaf_fields_and_keeps_the_trained_model(tmp_path):
    folder = tmp_path / "run"
    with runner.RunFolder(folder, tiny(), log=lambda s: None) as run:
        (folder / "checkpoint.msgpack").write_bytes(b"weights")
        run.record("checkpoint.msgpack", run.train_inputs)
        run.write_json("train.json", {"validation_accuracy": {"accuracy": 1.0}}, run.train_inputs)
        run.write_json("evaluation/sanity.json", {"x": 1})
    longer = tiny(train=dataclasses.replace(tiny().train, epochs=3))
    with pytest.raises(
        FileExistsError, match=r"another config \(train\.epochs: 2 -> 3\); pass"
    ) as e:
        runner.RunFolder(folder, longer, log=lambda s: None)
    assert "batch_size" not in str(e.value)  # the unchanged train fields are not listed
    # The progress bar is not training: no refusal, and the checkpoint stays valid.
    shown = tiny(train=dataclasses.replace(tiny().train, progress=True))
    with runner.RunFolder(folder, shown, log=lambda s: None) as run:
        assert run.valid("checkpoint.msgpack", run.train_inputs)
    # Fields after training: accepted; the checkpoint stays valid, the rest is recomputed.
    logs: list[str] = []
    other = tiny(methods=("gradcam", "xgradcam"), scale_ratio=1.5)
    with runner.RunFolder(folder, other, log=logs.append) as run:
        assert run.valid("checkpoint.msgpack", run.train_inputs)
        assert not run.valid("evaluation/sanity.json")
    assert "methods: ['gradcam', 'hirescam'] -> ['gradcam', 'xgradcam']" in logs[0]
    assert "scale_ratio: 1.0 -> 1.5" in logs[0] and "trained model is reused" in logs[0]
    # --overwrite keeps a checkpoint whose training fields are unchanged...
    with runner.RunFolder(folder, tiny(), overwrite=True, log=lambda s: None) as run:
        assert run.valid("checkpoint.msgpack", run.train_inputs)
    assert not (folder / "evaluation" / "sanity.json").exists()
    # ... and clears it when they change.
    with runner.RunFolder(folder, longer, overwrite=True, log=lambda s: None):
        pass
    assert not (folder / "checkpoint.msgpack").exists()


@pytest.mark.slow
def test_a_methods_change_reuses_the_checkpoint_and_the_analysis_it_has(finished_run, tmp_path):
    out, results, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    logs: list[str] = []
    again = runner.run(tiny(methods=("gradcam", "xgradcam")), copy, log=logs.append)
    assert any(line.startswith("train: loading") for line in logs)
    assert not any(line.startswith("train: ") and "validation accuracy" in line for line in logs)
    analysed = [line for line in logs if line.startswith("analyse:")]
    assert len(analysed) == 2 and all(line.startswith("analyse: xgradcam on") for line in analysed)
    assert again["train"] == results["train"]
    assert again["analysis"]["gradcam"] == results["analysis"]["gradcam"]
    assert "xgradcam" in again["analysis"] and "hirescam" not in again["analysis"]


def test_a_folder_from_before_a_new_config_field_still_resumes(tmp_path):
    """An older config.json lacks fields added since (here devices and tokens_prefix, at
    their defaults): the folder is still this config's, and its stage outputs keep their
    digest; a field that really differs is still refused."""
    folder = tmp_path / "run"
    with runner.RunFolder(folder, tiny(), log=lambda s: None):
        pass
    old = json.loads((folder / "config.json").read_text())
    for added in ("devices", "tokens_prefix"):
        del old[added]
    (folder / "config.json").write_text(json.dumps(old))
    with runner.RunFolder(folder, tiny(), log=lambda s: None):
        pass
    digest = config_digest
    assert digest(tiny()) == digest(dataclasses.replace(tiny(), tokens_prefix=None))
    assert digest(tiny()) != digest(tiny(devices=2))
    with pytest.raises(FileExistsError, match=r"another config \(seed: 0 -> 1\)"):
        runner.RunFolder(folder, tiny(seed=1), log=lambda s: None)


def test_the_runner_runs_as_a_module():
    """``python -m ifa_jax.runner`` is the ifa-jax command (it printed nothing before)."""
    env = {**os.environ, "IFA_JAX_NO_MALLOC_TUNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "ifa_jax.runner", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ifa-jax") and "compare" in done.stdout

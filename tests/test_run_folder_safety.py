"""The run folder and the config stay inside what the user named: planted paths, links
and plug-ins are refused with nothing outside changed; files of the wrong shape are
recomputed, not crashed on; faults name the file and leave nothing behind."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import resource
import shutil
import sys

import numpy as np
import pytest

from ifa_jax import io, runner
from ifa_jax.runner import main as runner_main
from ifa_jax.runner.folder import MANIFEST
from ifa_jax.runner.stages import train_info_problem
from tests.test_runner import tiny

# ifa_jax.runner.main is also the name of the CLI function; the module holds run().
MAIN_MODULE = sys.modules["ifa_jax.runner.main"]


def quiet(_):
    pass


def snapshot(folder) -> dict[str, str]:
    """Every file below ``folder`` (links as links) with a digest of its bytes."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, folder)
            if os.path.islink(full):
                out[rel] = "link:" + os.readlink(full)
            elif os.path.isfile(full):
                with open(full, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def outside(tmp_path):
    """A folder beside the run folder holding files that must never change."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "victim.txt").write_text("precious")
    (folder / "notes.txt").write_text("my notes")
    (folder / "sub").mkdir()
    (folder / "sub" / "gradcam_train.npz").write_bytes(b"not the runner's")
    return folder


def made_run(tmp_path):
    folder = tmp_path / "run"
    with runner.RunFolder(folder, tiny(), log=quiet) as run:
        run.write_json("evaluation/sanity.json", {"x": 1})
    return folder


def plant_manifest(folder, **entries):
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.update(entries)
    (folder / MANIFEST).write_text(json.dumps(manifest))


ENTRY = {"sha256": "0" * 64, "checkpoint": None, "inputs": None}


@pytest.mark.parametrize("planted", ["../outside/victim.txt", "ABSOLUTE", "analysis/../../x"])
def test_overwrite_never_deletes_a_manifest_path_outside_the_folder(tmp_path, outside, planted):
    folder = made_run(tmp_path)
    name = str(outside / "victim.txt") if planted == "ABSOLUTE" else planted
    plant_manifest(folder, **{name: ENTRY})
    before = snapshot(outside)
    with pytest.raises(ValueError, match=r"manifest\.json entry .* points outside it"):
        runner.RunFolder(folder, tiny(seed=1), overwrite=True, log=quiet)
    assert snapshot(outside) == before
    # Nothing of the folder was cleared either: the refusal comes before any deletion.
    assert (folder / "evaluation" / "sanity.json").exists()
    with pytest.raises(ValueError, match=r"points outside it"):  # resuming reads it too
        runner.RunFolder(folder, tiny(), log=quiet)


def test_a_linked_subfolder_is_refused_and_never_written_through(tmp_path, outside):
    folder = made_run(tmp_path)
    shutil.rmtree(folder / "analysis")
    os.symlink(outside / "sub", folder / "analysis")
    plant_manifest(folder, **{"analysis/gradcam_train.npz": ENTRY})
    before = snapshot(outside)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"points outside it|analysis' is a symbolic link"):
            runner.RunFolder(folder, tiny(seed=int(overwrite)), overwrite=overwrite, log=quiet)
    assert snapshot(outside) == before


def test_overwrite_removes_a_link_in_place_of_a_runner_file_never_its_target(tmp_path, outside):
    folder = made_run(tmp_path)
    os.remove(folder / "evaluation" / "sanity.json")
    os.symlink(outside / "victim.txt", folder / "evaluation" / "sanity.json")
    os.symlink(outside / "notes.txt", folder / "report.md")
    before = snapshot(outside)
    logs: list[str] = []
    with runner.RunFolder(folder, tiny(), log=logs.append) as run:
        assert not run.valid("evaluation/sanity.json")  # a link is never the runner's file
    assert any("is a symbolic link, not the runner's" in line for line in logs)
    with runner.RunFolder(folder, tiny(seed=1), overwrite=True, log=quiet):
        pass
    assert snapshot(outside) == before


def test_a_hard_linked_lock_file_is_refused_and_its_target_untouched(tmp_path, outside):
    folder = made_run(tmp_path)
    os.remove(folder / ".lock")
    os.link(outside / "notes.txt", folder / ".lock")
    before = snapshot(outside)
    with pytest.raises(ValueError, match=r"\.lock' is a hard link to another file"):
        runner.RunFolder(folder, tiny(), log=quiet)
    assert snapshot(outside) == before


def test_a_lock_file_in_a_folder_not_the_runners_is_left_as_it_is(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / ".lock").write_text("another tool's lock")
    with pytest.raises(FileExistsError, match=r"holds a \.lock file but is not a run folder"):
        runner.RunFolder(folder, tiny(), log=quiet)
    assert (folder / ".lock").read_text() == "another tool's lock"
    assert os.listdir(folder) == [".lock"]


def test_manifest_entries_that_are_not_runner_files_are_never_deleted(tmp_path):
    folder = made_run(tmp_path)
    (folder / "notes").mkdir()
    (folder / "notes" / "mine.txt").write_text("mine")
    (folder / "analysis" / "mine.txt").write_text("mine")
    (folder / f"draft{io.TEMP_MARK}txt").write_text("mine")  # a user file, not a temporary
    planted = ["notes/mine.txt", "analysis/mine.txt", ".lock", "a" * 300, "config.json/x"]
    plant_manifest(folder, **dict.fromkeys(planted, ENTRY))
    logs: list[str] = []
    with runner.RunFolder(folder, tiny(seed=1), overwrite=True, log=logs.append):
        assert (folder / ".lock").exists()  # held, and never cleared
    assert (folder / "notes" / "mine.txt").read_text() == "mine"
    assert (folder / "analysis" / "mine.txt").read_text() == "mine"
    assert (folder / f"draft{io.TEMP_MARK}txt").read_text() == "mine"
    assert not (folder / "evaluation" / "sanity.json").exists()  # the runner's own: cleared
    assert sum("names no file the runner writes; ignored" in line for line in logs) == 5


def test_a_pipe_in_place_of_a_runner_file_is_named_not_waited_on(tmp_path):
    folder = made_run(tmp_path)
    os.remove(folder / "evaluation" / "sanity.json")
    os.mkfifo(folder / "evaluation" / "sanity.json")
    logs: list[str] = []
    with runner.RunFolder(folder, tiny(), log=logs.append) as run:
        assert run.read_json("evaluation/sanity.json") is None
    assert "evaluation/sanity.json is not a plain file" in logs[-1]
    os.remove(folder / "config.json")
    os.mkfifo(folder / "config.json")
    with pytest.raises(ValueError, match=r"config\.json is damaged \(it is not a plain file"):
        runner.RunFolder(folder, tiny(), log=quiet)


def test_a_linked_lock_file_is_refused_and_its_target_untouched(tmp_path, outside):
    folder = made_run(tmp_path)
    os.remove(folder / ".lock")
    os.symlink(outside / "notes.txt", folder / ".lock")
    before = snapshot(outside)
    with pytest.raises(ValueError, match=r"\.lock' is a symbolic link"):
        runner.RunFolder(folder, tiny(), log=quiet)
    assert snapshot(outside) == before


@pytest.mark.parametrize(
    "name", ["../../escaped", "/srv/escaped", "a/b", "..", "", "a\\b", "x" * 256, "a\nb", "\u202e"]
)
def test_a_config_name_is_one_folder_name(name):
    with pytest.raises(ValueError, match=r"must be one folder name"):
        tiny(name=name)


def test_cli_refuses_an_empty_out(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"name": "x"}))
    assert runner_main(["run", "--config", str(config), "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err


PLUGIN = """
import flax.linen as nn


class Net(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))
"""


def cli(tmp_path, capsys, config: dict, *args: str) -> tuple[int, str]:
    path = tmp_path / "cfg" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(config))
    code = runner_main(["run", "--config", str(path), *args])
    return code, capsys.readouterr().err


def test_a_json_config_cannot_run_code_the_user_did_not_name(tmp_path, capsys):
    touched = tmp_path / "touched"
    command = {"command": f"touch {touched}"}
    plugin = tmp_path / "elsewhere.py"
    plugin.write_text(PLUGIN)
    out = str(tmp_path / "o")
    cases = [
        ({"model": "os:system", "model_kwargs": command}, (), r"model 'os:system' names code"),
        ({"dataset": "os:system", "dataset_kwargs": command}, (), r"dataset 'os:system'"),
        ({}, ("--set", "dataset=os:system"), r"dataset 'os:system' names code to run"),
        ({"model": f"{plugin}:Net"}, (), r"may name only a \.py file inside the config's folder"),
        ({"model": "../elsewhere.py:Net"}, (), r"--plugin .*elsewhere\.py"),
    ]
    for fields, args, message in cases:
        code, err = cli(
            tmp_path, capsys, {"name": "x", "layer": "conv", **fields}, "--out", out, *args
        )
        assert code == 2 and "Traceback" not in err, err
        assert re.search(message, err), err
    assert not touched.exists()
    assert not os.path.exists(out)


def test_plugins_in_the_config_folder_or_named_on_the_command_line_are_loaded(tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "mine.py").write_text(PLUGIN)
    (tmp_path / "elsewhere.py").write_text(PLUGIN)
    relative = folder / "relative.json"
    relative.write_text(json.dumps({"name": "x", "model": "mine.py:Net", "layer": "conv"}))
    # Relative plug-in paths resolve against the config's folder, not the working directory.
    config = runner.load_config(relative)
    assert config.model == f"{folder / 'mine.py'}:Net"
    away = folder / "away.json"
    away.write_text(json.dumps({"name": "x", "model": "../elsewhere.py:Net", "layer": "conv"}))
    with pytest.raises(ValueError, match=r"names code to run"):
        runner.load_config(away)
    named = runner.load_config(away, plugins=[str(tmp_path / "elsewhere.py")])
    assert named.model == f"{tmp_path / 'elsewhere.py'}:Net"
    missing = folder / "missing.json"
    missing.write_text(json.dumps({"name": "x", "model": "nope.py:Net"}))
    with pytest.raises(FileNotFoundError, match=r"neither in the config's folder .* nor in the"):
        runner.load_config(missing)
    with pytest.raises(ValueError, match=r"has more than one ':'"):
        tiny(model="mine.py:Net:x")
    os.symlink(tmp_path / "elsewhere.py", folder / "link.py")
    linked = folder / "linked.json"
    linked.write_text(json.dumps({"name": "x", "model": "link.py:Net", "layer": "conv"}))
    with pytest.raises(ValueError, match=r"'.*link\.py' is a link to '.*elsewhere\.py', outside"):
        runner.load_config(linked)
    for wrong, message in ((str(folder), "neither a .py file"), ("gone.py", "no such file")):
        with pytest.raises(ValueError, match=rf"--plugin .*{message}"):
            runner.registry.check_trusted(tiny(), plugins=[wrong])
    # A module is run only when named with --plugin (a .py config is code: trusted).
    runner.registry.check_trusted(tiny(model="json:Net"), plugins=["json"])
    with pytest.raises(ValueError, match=r"--plugin json"):
        runner.registry.check_trusted(tiny(model="json:Net"), folder=folder)


def test_files_of_the_wrong_shape_are_recomputed_naming_the_file(tmp_path):
    logs: list[str] = []
    folder = tmp_path / "run"
    with runner.RunFolder(folder, tiny(), log=logs.append) as run:
        run.write_json("evaluation/a.json", {"version": 1})  # no numbers
        run.write_json("train.json", [1, 2])
        run.save_npz("analysis/m.npz", {"x": np.zeros(2)})
        run.save_npz("analysis/pickled.npz", {"o": np.array([{"a": 1}], dtype=object)})
        run.write_json("evaluation/b.json", {"version": 1, "numbers": {}, "arrays": []})
        assert run.read_json("evaluation/a.json", MAIN_MODULE.evaluation_problem) is None
        assert run.read_json("train.json", train_info_problem) is None
        assert run.read_npz("analysis/m.npz", ["summary_count"]) is None
        assert run.read_npz("analysis/pickled.npz") is None
        assert run.read_json("evaluation/b.json", MAIN_MODULE.evaluation_problem) == {
            "version": 1,
            "numbers": {},
            "arrays": [],
        }
    text = "\n".join(logs)
    assert "evaluation/a.json is not what the runner writes (no numbers, arrays)" in text
    assert "train.json is not what the runner writes (a JSON list" in text
    assert "analysis/m.npz is not what the runner writes (no array summary_count)" in text
    assert "analysis/pickled.npz is not what the runner writes (Object arrays" in text
    # A manifest entry of the wrong shape is dropped (its file recomputed), not crashed on.
    plant_manifest(folder, **{"evaluation/b.json": "a string"})
    logs.clear()
    with runner.RunFolder(folder, tiny(), log=logs.append) as run:
        assert not run.valid("evaluation/b.json")
    assert any("entry 'evaluation/b.json' is damaged" in line for line in logs)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json is damaged \(it holds a JSON list"):
        runner.RunFolder(folder, tiny(), log=quiet)


def test_set_plugin_paths_resolve_against_the_config_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "mine.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)  # not the config's folder
    # The plug-in is found and trusted; the run then stops on the missing layer, before
    # anything is written.
    code, err = cli(tmp_path, capsys, {"name": "x", "layer": "nope"}, "--set", "model=mine.py:Net")
    assert code == 2 and "layer 'nope' not found" in err, err


def test_runs_that_cannot_finish_are_refused_before_training(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=r"'devices' is 64, but this machine has 1"):
        runner.run(tiny(devices=64), out, log=quiet)
    plugin = tmp_path / "empty.py"
    plugin.write_text(
        "import numpy as np\nfrom ifa_jax import inputs\n"
        "def no_validation(seed):\n"
        "    x = np.zeros((8, 8, 8, 1), np.float32); y = np.arange(8) % 2\n"
        "    return inputs.Dataset(x, y, 2, 't'), inputs.Dataset(x[:0], y[:0], 2, 'v')\n"
    )
    with pytest.raises(ValueError, match=r"the validation split of dataset .* is empty"):
        runner.run(tiny(dataset=f"{plugin}:no_validation"), out, log=quiet)
    with pytest.raises(ValueError, match=r"model 'convnet' does not take model_kwargs"):
        runner.run(tiny(model_kwargs=(("widht", 3),)), out, log=quiet)
    with pytest.raises(ValueError, match=r"model 'convnet' cannot be built .* model_kwargs"):
        runner.run(tiny(model_kwargs=(("features", "abc"),)), out, log=quiet)
    with pytest.raises(ValueError, match=r"dataset_kwargs \{'limit': 3\} apply only to a plug"):
        tiny(dataset_kwargs=(("limit", 3),))
    with pytest.raises(ValueError, match=r"count must be one of correct, all; got 'some'"):
        tiny(count="some")
    assert not out.exists()


def test_folders_opened_concurrently_are_busy_never_foreign(tmp_path):
    def open_one(i):
        try:
            with runner.RunFolder(tmp_path / f"run{i % 3}", tiny(), log=quiet):
                return "opened"
        except runner.RunFolderBusyError:
            return "busy"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(open_one, range(60)))
    assert set(outcomes) <= {"opened", "busy"} and "opened" in outcomes


def test_another_runners_lock_in_the_making_does_not_make_a_folder_foreign(tmp_path):
    # What a runner opening the same new folder leaves for an instant: its lock under a
    # temporary name and its write test (the CI race the concurrent test above found).
    out = tmp_path / "new"
    out.mkdir()
    (out / ".lock.ifa-tmp.abc123").write_bytes(b"")
    (out / ".write-test.ifa-tmp.def456").write_bytes(b"")
    with runner.RunFolder(out, tiny(), log=quiet) as folder:
        assert folder.has(".ifa_jax_run")
    other = tmp_path / "other"
    other.mkdir()  # a real foreign file still makes a folder foreign
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"is not empty \(notes.txt\)"):
        runner.RunFolder(other, tiny(), log=quiet)


def test_a_full_disk_names_the_file_and_leaves_no_lock(tmp_path):
    out = tmp_path / "new"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        with pytest.raises(io.WriteError, match=r"could not write .*new/\.lock \(File too large"):
            runner.RunFolder(out, tiny(), log=quiet)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert not out.exists()  # the folder this call made is gone again, lock and all


def test_an_interrupted_run_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(MAIN_MODULE, "run", interrupted)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"name": "x"}))
    assert runner_main(["run", "--config", str(config), "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err and "Traceback" not in err


def snapshot_without_lock(folder) -> dict[str, str]:
    """:func:`snapshot` less the lock, which holds the PID of the last runner."""
    return {k: v for k, v in snapshot(folder).items() if k != ".lock"}


@pytest.mark.parametrize(
    "name",
    [
        "config.json",
        MANIFEST,
        "checkpoint.msgpack",
        "train_state.msgpack",
        "report.md",
        ".ifa_jax_run",
        "evaluation/consistency.json",
        "figures/cams.png",
    ],
)
def test_a_folder_in_place_of_a_runner_file_is_refused_naming_it(tmp_path, name):
    folder = made_run(tmp_path)
    if (folder / name).exists():
        os.remove(folder / name)
    (folder / name).mkdir()
    (folder / name / "mine.txt").write_text("mine")
    before = snapshot_without_lock(folder)
    outputs = ["evaluation/consistency.json", "figures/cams.png"]  # what run() would write
    for overwrite in (False, True):
        with pytest.raises(IsADirectoryError) as caught:
            runner.RunFolder(folder, tiny(), overwrite=overwrite, log=quiet, outputs=outputs)
        assert f"{name}' is a folder, where the runner writes its file {name}" in str(caught.value)
        assert "Move or remove that folder" in str(caught.value)
    assert snapshot_without_lock(folder) == before  # nothing written, nothing deleted


def test_a_folder_at_a_stage_file_is_refused_when_written_and_a_file_at_a_subfolder(tmp_path):
    folder = made_run(tmp_path)
    (folder / "evaluation" / "extra.json").mkdir()  # not among the outputs named up front
    with runner.RunFolder(folder, tiny(), log=quiet) as run:
        assert run.read_json("evaluation/extra.json") is None
        with pytest.raises(IsADirectoryError, match=r"extra\.json' is a folder, where the"):
            run.write_json("evaluation/extra.json", {"x": 1})
    assert (folder / "evaluation" / "extra.json").is_dir()
    shutil.rmtree(folder / "figures")
    (folder / "figures").write_text("mine")
    with pytest.raises(FileExistsError, match=r"figures' is not a folder, where the runner"):
        runner.RunFolder(folder, tiny(), log=quiet)
    assert (folder / "figures").read_text() == "mine"
    # read back as data, a folder is named as such (was: "[Errno 21] Is a directory: 4")
    with pytest.raises(ValueError, match=r"it is a folder, not a file"):
        runner.folder.read_plain_json(str(folder / "evaluation"))


def test_training_state_and_run_checkpoint_are_never_read_through_a_link(tmp_path, outside):
    from ifa_jax.runner import train as training
    from ifa_jax.runner.data import Dataset
    from ifa_jax.runner.models import ConvNet

    x = np.random.default_rng(0).uniform(size=(8, 6, 6, 1)).astype(np.float32)
    data = Dataset(x, np.arange(8) % 2, 2, "t")
    model = ConvNet(features=(2,), num_classes=2)
    config = training.TrainConfig(epochs=1, batch_size=8, progress=False)
    good = tmp_path / "good.msgpack"
    variables, _ = training.train(model, data, config=config, state_path=good)
    # A state file reached through a link is never read (nor written through).
    link = tmp_path / "state.msgpack"
    os.symlink(good, link)
    with pytest.raises(training.TrainStateFileError, match=r"is not read: it is a symbolic"):
        training.train(model, data, config=config, state_path=link)
    training.save_checkpoint(outside / "ckpt.msgpack", variables)
    os.symlink(outside / "ckpt.msgpack", tmp_path / "ckpt.msgpack")
    before = snapshot(outside)
    with pytest.raises(ValueError, match=r"ckpt\.msgpack' is not read: it is a symbolic link"):
        training.load_checkpoint(tmp_path / "ckpt.msgpack", variables, follow_links=False)
    (tmp_path / "folder.msgpack").mkdir()
    with pytest.raises(ValueError, match=r"folder\.msgpack' is not read: it is a folder"):
        training.load_checkpoint(tmp_path / "folder.msgpack", variables, follow_links=False)
    assert snapshot(outside) == before
    # A user's own file may still be a link (the config's variables, load_checkpoint).
    training.load_checkpoint(tmp_path / "ckpt.msgpack", variables)


def fix_digest(folder, name: str) -> None:
    """Edit ``name``'s digest in the manifest to match the file (and, for the checkpoint,
    every entry computed from it), as a user editing both would."""
    manifest = json.loads((folder / MANIFEST).read_text())
    new = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    old = manifest[name]["sha256"]
    for entry in manifest.values():
        if entry.get("checkpoint") == old:
            entry["checkpoint"] = new
    manifest[name]["sha256"] = new
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.slow
def test_edited_files_whose_digests_were_edited_too_are_recomputed(tmp_path, outside):
    from ifa_jax.runner.evaluations import EVALUATIONS
    from ifa_jax.runner.report import FIGURES

    evaluations = [e for e in EVALUATIONS if e.name in ("consistency", "subsets")]
    figures = [f for f in FIGURES if f.key in ("consistency", "subsets")]
    folder = tmp_path / "run"
    config = tiny(methods=("gradcam",))

    def run(logs):
        return runner.run(config, folder, log=logs.append, evaluations=evaluations, figures=figures)

    first = run([])
    # Numbers of the wrong shape that the report (consistency) or a figure (subsets'
    # ratios) cannot read.
    for name, edit in (
        ("consistency", lambda d: d["numbers"].update(summary=[1, 2])),
        ("subsets", lambda d: d["numbers"]["top"].update(ratios="x")),
    ):
        path = folder / "evaluation" / f"{name}.json"
        stored = json.loads(path.read_text())
        edit(stored)
        path.write_text(json.dumps(stored))
        fix_digest(folder, f"evaluation/{name}.json")
    logs: list[str] = []
    again = run(logs)
    text = "\n".join(logs)
    assert "evaluation/consistency.json is not what the runner writes (its report cannot" in text
    assert "the subsets figure cannot read what evaluation/subsets.json holds" in text
    assert again["consistency"] == first["consistency"]
    assert again["subsets"] == first["subsets"]
    # A damaged checkpoint (digests edited to match) and a training state that is a link
    # to a file outside: the run's own files, so training is recomputed.
    (folder / "checkpoint.msgpack").write_bytes(b"garbage")
    fix_digest(folder, "checkpoint.msgpack")
    os.symlink(outside / "notes.txt", folder / "train_state.msgpack")
    before = snapshot(outside)
    logs.clear()
    third = run(logs)
    text = "\n".join(logs)
    assert "train: the run's checkpoint" in text
    assert "it is the runner's own file, so the training stage is recomputed" in text
    assert "save the variables again" not in text  # advice for a user's own file
    assert "train_state.msgpack' is not read: it is a symbolic link" in text
    assert snapshot(outside) == before
    assert not os.path.lexists(folder / "train_state.msgpack")
    assert third["train"]["validation_accuracy"] == first["train"]["validation_accuracy"]


def test_analysis_arrays_of_the_wrong_shape_are_recomputed_naming_the_file(tmp_path):
    from ifa_jax.runner.stages import analysis_problem

    c, k, n = 3, 4, 5
    good = {
        "summary_im_all": np.zeros(k),
        **{f"summary_{f}": np.zeros((c, k)) for f in ("im_class", "im_diff", "im_var")},
        "summary_covariance": np.zeros((k, k)),
        "summary_cam_mean": np.zeros((c, 2, 2)),
        "summary_class_counts": np.zeros(c),
        "summary_present": np.ones(c, bool),
        "summary_seen": np.array(n),
        **{f"sample_{f}": np.zeros(n) for f in ("cam_max", "cam_min", "label")},
        "sample_importance": np.zeros((n, k)),
    }
    assert analysis_problem(good, c, n) is None
    for key, value, problem in (
        ("summary_im_class", np.zeros(3), "summary_im_class has shape (3,), not (3, 4)"),
        ("sample_cam_max", np.zeros((2, 2)), "sample_cam_max has shape (2, 2), not (5,)"),
        ("sample_label", np.array(["a"] * n), "sample_label holds <U1 values, not numbers"),
        ("summary_cam_mean", np.zeros(c), "summary_cam_mean has shape (3,), not (3, *spatial)"),
    ):
        assert analysis_problem({**good, key: value}, c, n) == problem
    logs: list[str] = []
    with runner.RunFolder(tmp_path / "run", tiny(), log=logs.append) as run:
        run.save_npz("analysis/m.npz", {**good, "sample_cam_max": np.zeros((2, 2))})
        assert run.read_npz("analysis/m.npz", check=lambda a: analysis_problem(a, c, n)) is None
        run.save_npz("analysis/m.npz", good)
        assert run.read_npz("analysis/m.npz", check=lambda a: analysis_problem(a, c, n))
    assert "analysis/m.npz is not what the runner writes (sample_cam_max has shape" in logs[0]


def test_nan_inputs_in_the_validation_split_are_named_as_a_data_fault():
    from ifa_jax.runner import train as training
    from ifa_jax.runner.data import Dataset
    from ifa_jax.runner.models import ConvNet

    x = np.random.default_rng(1).uniform(size=(8, 6, 5, 2)).astype(np.float32)
    y = np.arange(8, dtype=np.int32) % 3
    bad = x.copy()
    bad[5, 2, 3, 1] = np.nan  # was: trained on, with a NaN validation loss and no word
    config = training.TrainConfig(epochs=1, batch_size=4, progress=False)
    model = ConvNet(ndim=2, features=(4,), num_classes=3)
    with pytest.raises(
        FloatingPointError,
        match=r"validation data holds NaN or inf inputs: 1 example.*example 5 of va\)",
    ):
        training.train(model, Dataset(x, y, 3, "tr"), Dataset(bad, y, 3, "va"), config)

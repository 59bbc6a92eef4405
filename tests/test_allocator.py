"""The CPU allocator tuning (ifa_jax.runner.allocator): when the command restarts itself,
that it does so once, and that the analysis is the same to the bit with and without it.

Nothing here is timed (the benchmark's allocator section measures the effect).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from ifa_jax.runner import allocator
from ifa_jax.runner.allocator import MARKER, OPT_OUT, TUNABLES, decide

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = (2, 36)
BASE = {"PATH": "/usr/bin", "HOME": "/home/u"}
ON_GLIBC = sys.platform.startswith("linux") and allocator.glibc_version() is not None


@pytest.mark.parametrize(
    ("extra", "platform", "glibc", "why"),
    [
        ({MARKER: "1"}, "linux", GLIBC, "restarted already"),
        ({OPT_OUT: "1"}, "linux", GLIBC, OPT_OUT),
        ({OPT_OUT: "yes"}, "linux", GLIBC, OPT_OUT),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "linux", GLIBC, "set already"),
        ({"GLIBC_TUNABLES": ""}, "linux", GLIBC, "set already"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "linux", GLIBC, "preloaded"),
        ({}, "darwin", GLIBC, "not Linux"),
        ({}, "win32", None, "not Linux"),
        ({}, "linux", None, "not glibc"),  # musl
        ({}, "linux", (2, 17), "not glibc 2.26"),
    ],
)
def test_no_restart(extra, platform, glibc, why):
    env, reason = decide({**BASE, **extra}, platform=platform, glibc=glibc)
    assert env is None and why in reason


@pytest.mark.parametrize("extra", [{}, {OPT_OUT: "0"}, {OPT_OUT: ""}, {"LD_PRELOAD": "libx.so"}])
def test_restart_environment(extra):
    env, reason = decide({**BASE, **extra}, platform="linux", glibc=GLIBC)
    assert env == {**BASE, **extra, "GLIBC_TUNABLES": TUNABLES, MARKER: "1"}
    assert TUNABLES in reason
    # The restarted process (marker and tunables set) does not restart again.
    assert decide(env, platform="linux", glibc=GLIBC)[0] is None
    # Neither does one whose loader dropped the tunables (as for setuid programs).
    dropped = {k: v for k, v in env.items() if k != "GLIBC_TUNABLES"}
    assert decide(dropped, platform="linux", glibc=GLIBC)[0] is None
    for name in ("arena_max=1", "mmap_max=0", "trim_threshold=", "top_pad="):
        assert f"glibc.malloc.{name}" in TUNABLES


def test_plain_environ_drops_the_tuning():
    env = allocator.plain_environ({**BASE, "GLIBC_TUNABLES": "x", "LD_PRELOAD": "y", MARKER: "1"})
    assert env == BASE


def test_a_caller_inside_python_is_never_replaced(monkeypatch):
    def execve(*args):
        raise AssertionError("restart_tuned(argv) with a list must not re-execute")

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(MARKER, raising=False)
    monkeypatch.delenv(OPT_OUT, raising=False)
    allocator.restart_tuned(["run", "--config", "c.py"])
    allocator.restart_tuned([])


def test_the_command_hands_its_argv_to_the_restart(monkeypatch):
    from ifa_jax.runner import main

    seen = []

    class Stop(Exception):
        pass

    def restart(argv):
        seen.append(argv)
        raise Stop

    monkeypatch.setattr(allocator, "restart_tuned", restart)
    for argv in (None, ["run", "--config", "c.py"]):
        with pytest.raises(Stop):
            main(argv)
    assert seen == [None, ["run", "--config", "c.py"]]


# The program of the restart test: it reports each start, then restarts (at most once).
PROGRAM = """
import os, sys
from experiments.tuned import restart_tuned
print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), "jax" in sys.modules,
      "ifa_jax" in sys.modules, flush=True)
restart_tuned()
print("after", flush=True)
"""


def _starts(**extra: str) -> list[list[str]]:
    env = allocator.plain_environ()
    env.pop(OPT_OUT, None)
    env.update(extra)
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    assert lines[-1] == ["after"]
    return lines[:-1]


@pytest.mark.skipif(not ON_GLIBC, reason="the restart happens on Linux with glibc only")
def test_the_script_restarts_once_before_jax():
    starts = _starts()
    assert len(starts) == 2, starts  # the marker stops a second restart
    (_, pid1, tun1, *imported1), (_, pid2, tun2, *imported2) = starts
    assert pid1 == pid2  # re-executed in place, not a child
    assert (tun1, tun2) == ("None", TUNABLES)
    assert imported1 == imported2 == ["False", "False"]  # neither jax nor ifa_jax


@pytest.mark.skipif(not ON_GLIBC, reason="the restart happens on Linux with glibc only")
def test_the_script_respects_the_opt_out_and_the_users_tunables():
    assert [s[2] for s in _starts(**{OPT_OUT: "1"})] == ["None"]
    mine = "glibc.malloc.arena_max=2"
    assert [s[2] for s in _starts(GLIBC_TUNABLES=mine)] == [mine]
    assert [s[2] for s in _starts(**{MARKER: "1"})] == ["None"]


# A tiny analysis pass whose statistics and per-sample values are written to an npz; it
# prints how many mmapped blocks glibc holds while a 64 MiB block is allocated (1 by
# default, 0 with the tuning: proof that the tunables reached the allocator).
ANALYZE = """
import ctypes, sys
import jax, numpy as np
from ifa_jax import analysis, linen_probe
from ifa_jax.runner.models import MnistCNN
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
class Info(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_int) for n in names.split()]
libc.mallinfo.restype = Info
block = libc.malloc(64 << 20)
print("hblks", libc.mallinfo().hblks, flush=True)
libc.free(block)
model = MnistCNN(width1=32, width2=64, hidden=64)
x = np.asarray(jax.random.uniform(jax.random.key(0), (96, 28, 28, 1)))
y = np.arange(96, dtype=np.int32) % 10
variables = model.init(jax.random.key(1), x[:1])
methods = ("gradcam", "gradcam++", "xgradcam", "hirescam")
out = analysis.analyze_methods(linen_probe(model, "relu2"), variables,
    [(x[i:i + 48], y[i:i + 48]) for i in (0, 48)], num_classes=10, methods=methods,
    count="all", keep_importance=True, progress=False)
arrays = {}
for m, res in out.items():
    arrays.update({f"{m}/summary/{k}": np.asarray(v) for k, v in res.summary._asdict().items()})
    arrays.update({f"{m}/sample/{k}": np.asarray(v) for k, v in res.samples.items()})
np.savez(sys.argv[1], **arrays)
"""


def test_analysis_is_bit_identical_with_and_without_the_tuning(tmp_path):
    plain = allocator.plain_environ()
    envs = {"default": plain, "tuned": allocator.tuned_environ(plain)}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", ANALYZE, str(tmp_path / f"{name}.npz")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, env in envs.items()
    }
    hblks, errors = {}, {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                errors[name] = err[-2000:]
            else:
                hblks[name] = int(out.split()[1])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert not errors, errors
    if ON_GLIBC:
        assert hblks["default"] >= 1 and hblks["tuned"] == 0, hblks
    with np.load(tmp_path / "default.npz") as a, np.load(tmp_path / "tuned.npz") as b:
        assert sorted(a.files) == sorted(b.files) and len(a.files) > 20
        for k in a.files:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert a[k].tobytes() == b[k].tobytes(), k
        assert float(np.abs(a["gradcam/sample/cam_max"]).max()) > 0


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
def test_benchmark_section_structure(monkeypatch):
    """The allocator section's rows and table, its workers run here (never timed)."""
    from experiments.bench import allocator as section
    from experiments.bench.main import parser, selected_sections

    assert selected_sections(parser().parse_args(["--only", "allocator"])) == {"allocator"}
    one = section.worker(0.0, batch=8)  # the real worker, in this process
    assert set(section.VARIANTS) <= set(one) and one["peak_rss_mib"] > 0
    for v in section.VARIANTS:
        assert one[v]["calls"] == 1 and one[v]["wall_s"] > 0 and 0 <= one[v]["sys_share"] <= 1
    envs = []

    def run_worker(env, min_time, batch):
        envs.append(env)
        slower = 2.0 if "GLIBC_TUNABLES" not in env else 1.0
        return {
            **one,
            **{v: {**one[v], "wall_s": slower * one[v]["wall_s"]} for v in section.VARIANTS},
        }

    monkeypatch.setattr(section, "run_worker", run_worker)
    res = section.run_allocators(["tuned"], rounds=2, batch=8, log=lambda s: None)
    assert [e.get("GLIBC_TUNABLES") for e in envs] == [None, TUNABLES] * 2
    assert all(MARKER not in e for e in envs[::2])  # the default worker is plain
    rows = {(r["variant"], r["allocator"]): r for r in res["rows"]}
    assert set(rows) == {(v, a) for v in section.VARIANTS for a in ("default", "tuned")}
    assert rows["step", "tuned"]["x_default"]["median"] == pytest.approx(2.0)
    assert rows["step", "default"]["x_default"]["median"] == 1.0
    table = section.format_allocators(res)
    assert "analyze() 4 methods, 32 images" in table and TUNABLES in table
    with pytest.raises(ValueError, match="unknown allocator"):
        section.allocator_environ("nosuch")

"""Sharded and multi-process analysis passes against one device in one process.

Each case runs in subprocesses: the device count is fixed when jax starts
(``XLA_FLAGS=--xla_force_host_platform_device_count``), and a multi-process run needs one
process per ``jax.distributed`` member.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap

import flax.serialization
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ifa_jax import analysis, linen_probe
from ifa_jax._checks import batch_multiple, batch_sharding, pad_batch
from ifa_jax.runner import data
from ifa_jax.runner.models import ConvNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, C, LOCAL_BATCH, PROCESSES = 21, 3, 3, 2
METHODS = ("gradcam", "hirescam")

# One member of a jax.distributed run: its own shard of the data, 2 CPU devices, the
# batch split over all 4 devices of both processes (3 rows per process: padded to 4).
WORKER = f"P, C, B, M = {PROCESSES}, {C}, {LOCAL_BATCH}, {METHODS}\n" + textwrap.dedent("""
    import sys
    import numpy as np, flax.serialization, jax
    pid, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=P,
                               process_id=pid, initialization_timeout=60)
    assert jax.process_count() == P and jax.local_device_count() == 2, jax.devices()
    from ifa_jax import analysis, linen_probe
    from ifa_jax.runner import data
    from ifa_jax.runner.models import ConvNet
    with np.load(f"{folder}/data.npz") as z:
        ds = data.Dataset(z["x"], z["y"], C)
    model = ConvNet(ndim=2, features=(4, 6), num_classes=C)
    with open(f"{folder}/variables.msgpack", "rb") as f:
        variables = flax.serialization.msgpack_restore(f.read())
    probe = linen_probe(model, "conv2")
    shard = list(data.batches(ds, B))  # this process's share (jax.process_index())
    results = analysis.analyze_methods(probe, variables, shard, num_classes=C, methods=M,
                                       count="all", keep_importance=True, progress=False,
                               mesh=jax.device_count())
    local = analysis.analyze(probe, variables, shard, num_classes=C, count="all",
                             progress=False)  # this shard alone: a partial state to merge
    out = {f"{m}/summary/{k}": np.asarray(v)
           for m, r in results.items() for k, v in r.summary._asdict().items()}
    out.update({f"{m}/samples/{k}": v for m, r in results.items()
                for k, v in r.samples.items()})
    out.update({f"local/{k}": np.asarray(v) for k, v in local.state._asdict().items()})
    np.savez(f"{folder}/out{pid}.npz", **out)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(commands, env, timeout: float) -> list[tuple[int, str]]:
    """Start every command, wait at most ``timeout`` seconds for all, kill what is left
    (also on failure). Returns (return code, stderr tail) per command."""
    procs = [
        subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for cmd in commands
    ]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
        return [(p.returncode, out[-3000:]) for p, out in zip(procs, outs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.communicate(timeout=10)


def _case(folder):
    """Data with all classes present and a model's variables, written for the workers."""
    rng = np.random.default_rng(0)
    x = rng.random((N, 6, 5, 2), dtype=np.float32)
    y = rng.integers(0, C, N).astype(np.int32)
    model = ConvNet(ndim=2, features=(4, 6), num_classes=C)
    variables = model.init(jax.random.key(1), x[:1])
    np.savez(folder / "data.npz", x=x, y=y)
    (folder / "variables.msgpack").write_bytes(flax.serialization.msgpack_serialize(variables))
    return model, variables, data.Dataset(x, y, C)


def _assert_same(got, want, what):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=what)


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """jax.distributed over 2 CPU processes (gloo) on localhost: each reads its own shard;
    every process gets the single-process statistics and samples, and the two partial
    states of the shards merge into the single-process state."""
    model, variables, ds = _case(tmp_path)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    port = str(_free_port())
    results = _run_processes(
        [[sys.executable, str(script), str(i), port, str(tmp_path)] for i in range(PROCESSES)],
        env,
        timeout=240,
    )
    for i, (code, out) in enumerate(results):
        assert code == 0, f"process {i} failed (exit {code}):\n{out}"

    probe = linen_probe(model, "conv2")
    global_batches = list(data.batches(ds, LOCAL_BATCH * PROCESSES, shard_index=0, shard_count=1))
    one = analysis.analyze_methods(
        probe,
        variables,
        global_batches,
        num_classes=C,
        methods=METHODS,
        count="all",
        keep_importance=True,
        progress=False,
    )
    assert isinstance(one, dict)
    for pid in range(PROCESSES):
        with np.load(tmp_path / f"out{pid}.npz") as z:
            for m, want in one.items():
                assert int(z[f"{m}/summary/seen"]) == N
                for k, v in want.summary._asdict().items():
                    _assert_same(z[f"{m}/summary/{k}"], v, f"process {pid}, {m}, {k}")
                for k, v in want.samples.items():
                    _assert_same(z[f"{m}/samples/{k}"], v, f"process {pid}, {m}, sample {k}")
    with np.load(tmp_path / "out0.npz") as a, np.load(tmp_path / "out1.npz") as b:
        parts = [analysis.Stats(*(z[f"local/{f}"] for f in analysis.Stats._fields)) for z in (a, b)]
    assert [int(p.seen) for p in parts] == [12, 9]  # the shards really differ
    merged = analysis.finalize(analysis.merge(*parts))
    for k, v in one[METHODS[0]].summary._asdict().items():
        _assert_same(getattr(merged, k), v, f"merged shard states, {k}")


# 8 host devices: batches of 10 rows (not a multiple of 8) through mesh=, a 2-D Mesh and
# sharding=, and the runner's `devices` field; every result equals one device's.
EIGHT_DEVICES = textwrap.dedent("""
    import sys
    import numpy as np, jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from ifa_jax import analysis, linen_probe
    from ifa_jax.runner import data
    from ifa_jax.runner.models import ConvNet
    from ifa_jax.runner import Config, RunFolder
    from ifa_jax.runner.stages import RunContext, load_analysis, stage_analyse
    assert jax.device_count() == 8, jax.devices()
    folder = sys.argv[1]
    rng = np.random.default_rng(0)
    x = rng.random((23, 6, 5, 2), dtype=np.float32)
    y = rng.integers(0, 3, 23).astype(np.int32)
    model = ConvNet(ndim=2, features=(4, 6), num_classes=3)
    variables = model.init(jax.random.key(1), x[:1])
    probe = linen_probe(model, "conv2")
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 23, 10)]

    def same(a, b):
        for k, v in a.summary._asdict().items():
            np.testing.assert_allclose(getattr(b.summary, k), v, rtol=1e-6, atol=1e-6,
                                       err_msg=k)
        assert a.samples.keys() == b.samples.keys()
        for k, v in a.samples.items():
            np.testing.assert_allclose(b.samples[k], v, rtol=1e-6, atol=1e-6, err_msg=k)

    def run(**kw):
        return analysis.analyze(probe, variables, batches, num_classes=3, count="all",
                                keep_importance=True, progress=False, **kw)

    one = run()
    grid = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    line = Mesh(np.array(jax.devices()), ("batch",))
    for kw in (dict(mesh=8), dict(mesh=grid),
               dict(sharding=NamedSharding(line, PartitionSpec("batch")))):
        many = run(**kw)
        assert len(many.state.count.sharding.device_set) == 8, kw
        same(one, many)

    # The runner: stage_analyse with devices=8 and with one device.
    used, analyze = [], analysis.analyze_methods
    def spy(*args, **kwargs):  # the devices each pass's state lives on
        results = analyze(*args, **kwargs)
        used.append(len(results["gradcam"].state.count.sharding.device_set))
        return results
    analysis.analyze_methods = spy
    splits = data.Splits(data.Dataset(x, y, 3), data.Dataset(x[:13], y[:13], 3))
    for devices in (1, 8):
        config = Config(name=f"d{devices}", dataset="sklearn_digits", model="convnet",
                        layer="conv2", batch_size=10, methods=("gradcam", "hirescam"),
                        devices=devices)
        with RunFolder(f"{folder}/d{devices}", config, log=lambda s: None) as out:
            ctx = RunContext(config, out, splits, model, log=lambda s: None)
            ctx.variables = variables
            stage_analyse(ctx)
    assert used == [1, 1, 8, 8], used  # train and validation, one device then eight
    for name in ("gradcam_train", "hirescam_validation"):
        a, sa = load_analysis(f"{folder}/d1/analysis/{name}.npz")
        b, sb = load_analysis(f"{folder}/d8/analysis/{name}.npz")
        same(analysis.Analysis(None, a, sa), analysis.Analysis(None, b, sb))
    print("OK")
""")


def test_eight_devices_any_batch_size_equal_one_device(tmp_path):
    """Batches of 10 rows on 8 host devices are padded to 16 through the validity mask
    (formerly JAX's IndivisibleError): statistics and samples equal one device's."""
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8"
    )
    [(code, out)] = _run_processes(
        [[sys.executable, "-c", EIGHT_DEVICES, str(tmp_path)]], env, timeout=300
    )
    assert code == 0, out
    assert out.strip().endswith("OK"), out


def test_padding_to_a_device_multiple_is_masked():
    x, y = np.arange(10.0, dtype=np.float32).reshape(5, 2), np.arange(5)
    px, py, valid = pad_batch(x, y, None, 5, 0, size_from="batch_size", fix="", multiple=4)
    assert px.shape == (8, 2) and py.shape == (8,)
    np.testing.assert_array_equal(valid, np.arange(8) < 5)
    np.testing.assert_array_equal(px[:5], x)
    assert not px[5:].any() and not py[5:].any()
    # A batch smaller than the nominal size is padded to the multiple above that size.
    assert pad_batch(x[:2], y[:2], None, 5, 1, size_from="", fix="", multiple=4)[0].shape[0] == 8


def test_batch_multiple_counts_the_shards_of_the_batch_axis():
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    assert batch_multiple(None) == 1
    assert batch_multiple(NamedSharding(mesh, PartitionSpec(("data", "model")))) == 1
    assert batch_multiple(batch_sharding(1, None)) == 1


def test_mesh_errors_name_the_fix():
    """The mesh is checked before anything is traced (so the variables are never used)."""
    probe = linen_probe(ConvNet(ndim=2, features=(4, 6), num_classes=C), "conv2")
    variables = {}
    batches = [(np.zeros((4, 6, 5, 2), np.float32), np.zeros(4, np.int32))]
    too_many = jax.device_count() + 1
    with pytest.raises(ValueError, match=rf"mesh={too_many} devices, but .*force_host"):
        analysis.analyze(probe, variables, batches, num_classes=C, mesh=too_many, progress=False)
    line = Mesh(np.array(jax.devices()), ("batch",))
    with pytest.raises(ValueError, match="pass mesh= or sharding=, not both"):
        analysis.analyze(
            probe,
            variables,
            batches,
            num_classes=C,
            mesh=line,
            sharding=NamedSharding(line, PartitionSpec("batch")),
            progress=False,
        )
    with pytest.raises(ValueError, match="mesh must be a jax.sharding.Mesh or a device count"):
        analysis.analyze(probe, variables, batches, num_classes=C, mesh="8", progress=False)

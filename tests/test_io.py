"""Atomic writes: failures name the file and keep the old one; modes follow the umask."""

from __future__ import annotations

import os
import resource
import stat

import pytest

from ifa_jax import io


def test_failed_write_names_the_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "report.md"
    path.write_bytes(b"old report")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # as `ulimit -f` would
    try:
        with pytest.raises(
            io.WriteError,
            match=rf"could not write {path} \(File too large\); "
            r"nothing was replaced.*run the same command "
            r"again to resume",
        ):
            io.atomic_write_bytes(path, b"x" * 5000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == b"old report"
    assert os.listdir(tmp_path) == ["report.md"]  # no temporary left behind


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        io.atomic_write_bytes(tmp_path / "f", b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == mode


def test_stale_temporaries_are_found_only_where_named(tmp_path):
    for sub in ("sub", "other"):
        (tmp_path / sub).mkdir()
    stale = tmp_path / "sub" / f".x.npz{io.TEMP_MARK}abc.npz"
    stale.write_bytes(b"partial")
    keep = [
        tmp_path / "sub" / ".hidden",
        tmp_path / "sub" / f"draft{io.TEMP_MARK}txt",  # not a name atomic_path gives
        tmp_path / "other" / f".y.npz{io.TEMP_MARK}abc.npz",  # not a folder named
    ]
    for path in keep:
        path.write_bytes(b"user file")
    assert io.remove_stale_temporaries(tmp_path, ("sub",)) == [str(stale)]
    assert all(path.exists() for path in keep) and not stale.exists()


def test_a_folder_that_cannot_hold_the_file_is_named(tmp_path):
    (tmp_path / "figures").write_text("a file where a folder should be")
    with pytest.raises(
        io.WriteError,
        match=r"could not write .*figures/cams\.png .*fix the "
        r"folder's permissions",
    ):
        io.atomic_write_bytes(tmp_path / "figures" / "cams.png", b"png")

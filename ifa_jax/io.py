"""Atomic file writes: a file is either its old complete self or its new complete self.

Everything ifa_jax writes (checkpoints, statistics, figures, reports) goes through
:func:`atomic_path`: the writer fills a temporary file in the same folder, which is then
renamed over the target (``os.replace`` is atomic on POSIX and Windows). A crash midway
leaves the previous file intact; a failed write (a full disk, a file-size limit) removes
its temporary file and raises :class:`WriteError` naming the file. Only a process killed
mid-write leaves a temporary behind; its name contains :data:`TEMP_MARK`, and
:func:`remove_stale_temporaries` clears them.

Examples:
    A writer fills the temporary path; the target appears only when it is done, and a
    temporary left by a killed writer is cleared:

    >>> import shutil
    >>> import tempfile
    >>> from pathlib import Path
    >>> from ifa_jax.io import TEMP_MARK, atomic_path, remove_stale_temporaries
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "stats.txt") as tmp:
    ...     _ = Path(tmp).write_text("done")
    ...     (folder / "stats.txt").exists()
    False
    >>> (folder / "stats.txt").read_text(), [p.name for p in folder.iterdir()]
    ('done', ['stats.txt'])
    >>> _ = (folder / f".stats.txt{TEMP_MARK}abc.tmp").write_text("cut short")
    >>> [Path(p).name for p in remove_stale_temporaries(folder)]
    ['.stats.txt.ifa-tmp.abc.tmp']
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator

# Every temporary file's name contains this, so left-overs of a killed writer are found.
TEMP_MARK = ".ifa-tmp."


class WriteError(OSError):
    """Writing a file failed; the previous version of the file, if any, is unchanged."""


def umask() -> int:
    """The process's umask (read without changing it).

    Returns:
        The umask, e.g. 0o022.
    """
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    ``suffix`` lets writers that infer the format from the name (``np.savez``,
    ``fig.savefig``) see the right extension. The file gets the mode a plain ``open``
    would give it (0666 less the umask), not ``mkstemp``'s private 0600.

    Args:
        path: the file to write.
        suffix: the temporary file's extension.

    Yields:
        The temporary path to fill.

    Raises:
        WriteError: the temporary file could not be made, filled or renamed (it is
            removed; ``path`` is unchanged).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(path)}{TEMP_MARK}", suffix=suffix
        )
        os.close(fd)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        raise _write_error(path, e) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_error(path: str, e: OSError) -> WriteError:
    return WriteError(
        e.errno,
        f"could not write {path} ({e.strerror or e}); nothing was replaced: the previous "
        "file, if any, is intact. Free space, raise the file-size limit or fix the folder's "
        "permissions, and run the same command again to resume",
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: the file to write.
        data: its new content.

    Raises:
        WriteError: the write failed; ``path`` is unchanged.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def remove_stale_temporaries(
    folder: str | os.PathLike, subfolders: tuple[str, ...] = ()
) -> list[str]:
    """Delete the temporaries that killed writers left in ``folder`` and in its
    ``subfolders`` (not below them, never through a link): regular files named as
    :func:`atomic_path` names them, ``.<name>`` + :data:`TEMP_MARK` + ....

    Call it only while no other process writes there (the runner holds the run folder's
    lock).

    Args:
        folder: the folder to clear.
        subfolders: names of its subfolders to clear as well.

    Returns:
        The removed paths.
    """
    removed = []
    for sub in ("", *subfolders):
        where = os.path.join(folder, sub)
        if os.path.islink(where) or not os.path.isdir(where):
            continue
        for name in sorted(os.listdir(where)):
            full = os.path.join(where, name)
            if not (name.startswith(".") and TEMP_MARK in name[1:]):
                continue
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(full).st_mode):
                    os.remove(full)
                    removed.append(full)
    return removed

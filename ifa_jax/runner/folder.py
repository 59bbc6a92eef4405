"""The run folder: one config's outputs, locked, verified by checksum, written atomically.

A run folder holds what :func:`ifa_jax.runner.run` writes:
``config.json``, the checkpoint and ``train.json``, ``analysis/*.npz``,
``evaluation/<name>.json`` (and ``.npz``), ``figures/*.png``, ``results.json``,
``report.md``, and ``manifest.json`` with the SHA-256 of every stage output and the
checkpoint it was computed from.

Examples:
    Numbers made JSON-ready, and the fields in which two configs differ:

    >>> import numpy as np
    >>> from ifa_jax.runner.config import Config, override
    >>> from ifa_jax.runner.folder import config_changes, to_jsonable
    >>> to_jsonable({"r": np.float32(0.5), "n": np.int64(3), "bad": float("nan")})
    {'r': 0.5, 'n': 3, 'bad': None}
    >>> new = override(Config(), "seed=1", "train.epochs=2")
    >>> config_changes(Config().to_dict(), new.to_dict())
    [('seed', 0, 1), ('train.epochs', 4, 2)]
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ifa_jax import io
from ifa_jax.runner.config import Config


def to_jsonable(obj):
    """NumPy / JAX values and NamedTuples as plain JSON values; non-finite floats as None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "_asdict"):
        return to_jsonable(obj._asdict())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def write_json(path: str, obj) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    io.atomic_write_bytes(path, json.dumps(to_jsonable(obj), indent=1).encode())


def save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """``arrays`` as an ``.npz`` at ``path``, atomically."""
    with io.atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)  # pyright: ignore[reportArgumentType] (numpy stub: **kwds)


# The file that marks a folder as made by the runner: --overwrite clears only such folders.
RUN_MARKER = ".ifa_jax_run"
LOCK_FILE = ".lock"
# Another runner opening the same folder at the same moment briefly makes these files
# (a lock under its temporary name, a write test); they never make a folder foreign.
_IN_FLIGHT = (f"{LOCK_FILE}{io.TEMP_MARK}", f".write-test{io.TEMP_MARK}")
MANIFEST = "manifest.json"
# The runner's own top-level files and its subfolders. --overwrite removes these files and
# the files the manifest records, never anything else.
TOP_LEVEL_FILES = (
    RUN_MARKER,
    MANIFEST,
    "config.json",
    "checkpoint.msgpack",
    "train.json",
    "train_state.msgpack",
    "results.json",
    "report.md",
)
SUBFOLDERS = ("analysis", "evaluation", "figures")
# The config fields training depends on. A run whose other fields change keeps its trained
# model: each stage output records a digest of only the fields it depends on.
TRAIN_FIELDS = (
    "dataset",
    "dataset_kwargs",
    "image_size",
    "validation_size",
    "model",
    "model_kwargs",
    "variables",
    "train",
    "seed",
)
# Leaves of those fields that change how training is shown, not what it computes.
NOT_TRAINING = ("train.progress",)
# What training leaves in the folder (kept by --overwrite while TRAIN_FIELDS are unchanged).
TRAINING_FILES = ("checkpoint.msgpack", "train.json", "train_state.msgpack")


# The kinds of file the runner writes in its subfolders.
SUBFOLDER_SUFFIXES = (".json", ".npz", ".png")


def runner_file(name: str) -> bool:
    """Whether ``name`` (relative) is a file the runner may write and so delete: one of
    its top-level files, or ``<subfolder>/<file>.json|.npz|.png``."""
    parts = os.path.normpath(name).split(os.sep)
    if len(parts) == 1:
        return parts[0] in TOP_LEVEL_FILES
    return (
        len(parts) == 2
        and parts[0] in SUBFOLDERS
        and not parts[1].startswith(".")
        and parts[1].endswith(SUBFOLDER_SUFFIXES)
    )


def read_plain_bytes(path: str) -> bytes:
    """The bytes of the regular file ``path``, never through a link or from a folder, pipe
    or device (``ValueError`` saying what it is instead)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError("it is a symbolic link, which the runner never reads") from None
        raise ValueError(e.strerror or str(e)) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError("it is a folder, not a file")
        if not stat.S_ISREG(mode):
            raise ValueError("it is not a plain file")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def read_plain_json(path: str):
    """The JSON value of the regular file ``path``, never through a link or from a folder,
    pipe or device (``ValueError`` saying what it is instead)."""
    return json.loads(read_plain_bytes(path))


class RunFolderBusyError(FileExistsError):
    """Another process holds the run folder's lock."""


def _without(values: dict, leaves: Sequence[str]) -> dict:
    out = dict(values)
    for leaf in leaves:
        top, _, sub = leaf.partition(".")
        if isinstance(out.get(top), dict):
            out[top] = {k: v for k, v in out[top].items() if k != sub}
    return out


def _set_fields(config: dict, drop: Sequence[str] = ()) -> dict:
    """The fields of a config dict that differ from the defaults: a field added to
    :class:`Config` later (with a default that keeps the old behaviour) changes neither
    the digest nor the comparison with a folder's older config.json. ``drop``: leaves
    (``train.progress``) left out of both first."""
    defaults = _without(Config().to_dict(), drop)
    config = _without(config, drop)
    return {k: v for k, v in config.items() if k not in defaults or v != defaults[k]}


def config_digest(
    config: Config, *sources: str, fields: Sequence[str] | None = None, **extra
) -> str:
    """Digest of a config's non-default fields and of the source files it runs (plug-ins).
    With ``fields``, of those fields only, and of ``extra`` (what a stage adds, such as
    its method): the digest a stage output records, so a change elsewhere leaves it valid."""
    if fields is None:
        values = _set_fields(config.to_dict())
    else:
        chosen = _set_fields(config.to_dict(), drop=NOT_TRAINING)
        values = {"fields": {k: v for k, v in chosen.items() if k in fields}, "extra": extra}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode())
    for path in sources:
        digest.update(sha256(path).encode())
    return digest.hexdigest()


def _leaves(values: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        if isinstance(v, Mapping) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """The leaf fields (``train.epochs``, ``method_options.gradcam++.eps``) that differ
    between two config dicts, fields left out read as their defaults: ``[(field, old,
    new)]``."""
    default = _leaves(Config().to_dict())
    a, b = default | _leaves(old), default | _leaves(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _shown(changes: Sequence[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes)


def sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes, or of a folder's files (names and bytes, sorted)."""
    digest = hashlib.sha256()
    files = [path]
    if os.path.isdir(path):
        files = sorted(
            os.path.join(root, name) for root, _, names in os.walk(path) for name in names
        )
    for name in files:
        if name != path:
            digest.update(os.path.relpath(name, path).encode() + b"\0")
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class RunFolder:
    """The run folder of one config: refuses another config's folder, resumes its own.

    Opening it takes an exclusive lock (a second runner on the same folder is refused,
    naming the process that holds it) and removes temporaries that a killed writer left.
    Every stage output is written atomically through :meth:`write_json` / :meth:`save_npz`
    / :meth:`record`, which note in ``manifest.json`` its SHA-256, the checkpoint it was
    computed from, and ``inputs`` (a digest of the config and any plug-in source it ran);
    :meth:`valid` accepts a file only if all three still match, so a damaged file, or one
    computed from another model, config or plug-in code, is recomputed instead of being
    misread. Use it as a context manager (or call :meth:`close`) to release the lock.

    ``outputs``: the files in its subfolders the run will write (``evaluation/x.json``).
    A folder found where the runner writes one of them, or one of its top-level files, is
    refused before anything is written (the runner deletes only files it wrote).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: Config,
        *,
        overwrite: bool = False,
        log: Callable[[str], None] = print,
        inputs: str | None = None,
        sources: Sequence[str] = (),
        outputs: Sequence[str] = (),
    ):
        self.path = os.path.abspath(os.fspath(path))
        self.config = config
        self.log = log
        self.checkpoint_digest: str | None = None
        self.sources = tuple(sources)
        self.outputs = tuple(outputs)
        self.inputs = inputs or config_digest(config, *self.sources)
        self.train_inputs = self.digest(TRAIN_FIELDS)
        self._lock = None
        created_folder = not os.path.isdir(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise self._unwritable(e) from None
        # The lock comes first: nothing else is created in the folder before it is held,
        # so a runner opening the same folder at the same moment sees only the lock.
        self._created_lock = False
        try:
            self._acquire_lock()
            self._check_writable()
            self._adopt(config, overwrite)
        except BaseException:
            # A lock file this call made is removed while still held, so no one else can
            # hold it in the meantime.
            if self._lock is not None and self._created_lock and not self._is_run_folder():
                with contextlib.suppress(OSError):
                    os.remove(self.file(LOCK_FILE))
            self.close()
            if created_folder:
                with contextlib.suppress(OSError):  # only while it is empty
                    os.rmdir(self.path)
            raise

    # -- opening -------------------------------------------------------------------------

    def _new_lock(self, lock: str) -> int | None:
        """A new lock file, already locked: made under a temporary name, locked, then
        linked into place, so no other runner can find it unlocked before this one holds
        it. None when another runner put its lock there first."""
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=_IN_FLIGHT[0])
        try:
            os.chmod(tmp, 0o666 & ~io.umask())
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.link(tmp, lock)
        except (FileExistsError, FileNotFoundError):
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        return fd

    def _open_lock(self) -> tuple[int, bool]:
        """The lock file's descriptor, and whether this call created it (then it is held
        already). Never through a link (``O_NOFOLLOW``); a lock that is not a plain file
        (a folder, a pipe) is refused before anything is written to it."""
        lock = self.file(LOCK_FILE)
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            while True:
                try:
                    fd, created = os.open(lock, flags), False
                    break
                except FileNotFoundError:
                    fd, created = self._new_lock(lock), True
                    if fd is not None:
                        break
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ValueError(
                    f"{lock!r} is a symbolic link; the runner never writes through links in "
                    "its run folder. Remove the link, or choose another --out"
                ) from None
            if e.errno in (errno.EISDIR, errno.ENXIO):
                raise ValueError(
                    f"{lock!r} is not a file (the runner's lock is a plain file); remove it, "
                    "or choose another --out"
                ) from None
            raise self._unwritable(e) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(
                f"{lock!r} is not a plain file; the runner writes only its own files. Remove "
                "it, or choose another --out"
            )
        return fd, created

    def _acquire_lock(self) -> None:
        """Hold the folder's lock (``self._lock``) and write this process's PID in it. A
        lock file found in a folder that is not a run folder is someone else's: refused,
        unchanged."""
        lock = self.file(LOCK_FILE)
        fd, created = self._open_lock()
        self._created_lock = created
        handle = os.fdopen(fd, "rb+", buffering=0)  # unbuffered: close() never writes
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A lock file removed (by a runner that gave up) after it was opened here no
            # longer guards the folder: treat the folder as busy.
            try:
                same = os.fstat(fd).st_ino == os.lstat(lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                raise BlockingIOError
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(64).decode(errors="replace").strip() or "unknown"
            handle.close()
            raise RunFolderBusyError(
                f"run folder {self.path!r} is in use by another runner (process {holder}); "
                "wait for it to finish, or choose another --out"
            ) from None
        self._lock = handle
        if os.fstat(fd).st_nlink != 1:
            self._lock = None
            handle.close()
            raise ValueError(
                f"{lock!r} is a hard link to another file; the runner writes only its own "
                "files. Remove it, or choose another --out"
            )
        if not created and not self._is_run_folder():
            self._lock = None
            handle.close()
            raise FileExistsError(
                f"{self.path!r} holds a {LOCK_FILE} file but is not a run folder (it has no "
                f"{RUN_MARKER} file), so nothing was written or deleted there; choose a new "
                f"or empty --out folder (or delete {LOCK_FILE} if it is left from a runner "
                "killed while it created this folder)"
            )
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()).encode())
        except OSError as e:
            raise io.WriteError(
                e.errno,
                f"could not write {lock} ({e.strerror or e}); free space or raise the "
                "file-size limit, then run the same command again",
            ) from None

    def _unwritable(self, e: OSError) -> PermissionError:
        return PermissionError(
            f"cannot write to the output folder {self.path!r} ({e.strerror}); pass a "
            "writable --out path"
        )

    def _check_writable(self) -> None:
        try:
            fd, probe_file = tempfile.mkstemp(dir=self.path, prefix=_IN_FLIGHT[1])
            os.close(fd)
            os.remove(probe_file)
        except OSError as e:
            raise self._unwritable(e) from None

    def _is_run_folder(self) -> bool:
        return self.has(RUN_MARKER)

    def _foreign_entries(self) -> list[str]:
        return sorted(
            n for n in os.listdir(self.path) if n != LOCK_FILE and not n.startswith(_IN_FLIGHT)
        )

    def _adopt(self, config: Config, overwrite: bool) -> None:
        ours = self._is_run_folder()
        entries = self._foreign_entries()
        if entries and not ours:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise FileExistsError(
                f"{self.path!r} is not empty ({shown}) and is not a run folder (it has no "
                f"{RUN_MARKER} file), so nothing was written or deleted there"
                f"{' (--overwrite only ever clears run folders)' if overwrite else ''}; "
                "choose a new or empty --out folder"
            )
        for sub in SUBFOLDERS:
            if os.path.islink(self.file(sub)):
                raise ValueError(
                    f"{self.file(sub)!r} is a symbolic link; the runner writes only inside "
                    "its run folder and never through links. Replace the link by a folder "
                    "(or remove it), or choose another --out"
                )
            if os.path.lexists(self.file(sub)) and not os.path.isdir(self.file(sub)):
                raise FileExistsError(
                    f"{self.file(sub)!r} is not a folder, where the runner keeps its {sub} "
                    "files; the runner never deletes what it did not write. Move or remove "
                    "it, then run the same command again"
                )
        self.refuse_folders((*TOP_LEVEL_FILES, *self.outputs))
        for stale in io.remove_stale_temporaries(self.path, SUBFOLDERS):
            self.log(
                f"run folder: removed {os.path.relpath(stale, self.path)}, left by an "
                "interrupted write"
            )
        mine = config.to_dict()
        retrain = True  # unknown config: nothing of it is kept by --overwrite
        if self.has("config.json"):
            try:
                theirs = read_plain_json(self.file("config.json"))
                if not isinstance(theirs, dict):
                    raise ValueError(f"it holds a JSON {type(theirs).__name__}, not an object")
            except ValueError as e:
                if overwrite:
                    theirs = None
                else:
                    raise ValueError(
                        f"{self.file('config.json')} is damaged ({e}), so the config this "
                        "run folder belongs to is unknown; pass --overwrite to start it "
                        "afresh, or choose another --out"
                    ) from None
            if theirs is not None:
                changes = config_changes(theirs, mine)
                retrain = any(
                    k.split(".")[0] in TRAIN_FIELDS and k not in NOT_TRAINING for k, _, _ in changes
                )
                if retrain and not overwrite:
                    raise FileExistsError(
                        f"run folder {self.path!r} holds a model trained with another config "
                        f"({_shown(changes)}); pass --overwrite to retrain there, or choose "
                        "another --out"
                    )
                if changes and not retrain:
                    self.log(
                        f"run folder: config changed ({_shown(changes)}); the trained model "
                        "is reused, and what depends on these fields is recomputed"
                    )
        if overwrite and ours:
            self.clear(keep_training=not retrain)
        self.manifest = self._read_manifest()
        for sub in SUBFOLDERS:
            os.makedirs(self.file(sub), exist_ok=True)
        io.atomic_write_bytes(self.file(RUN_MARKER), b"ifa_jax run folder\n")
        write_json(self.file("config.json"), mine)

    def refuse_folders(self, names: Sequence[str]) -> None:
        """Refuse (``IsADirectoryError`` naming it and the fix) a folder where the runner
        writes one of the files ``names``: a folder is never the runner's, so it is never
        deleted, and nothing could be written in its place."""
        for name in names:
            full = self.file(name)
            try:
                folder = stat.S_ISDIR(os.lstat(full).st_mode)
            except OSError:
                continue
            if folder:
                raise IsADirectoryError(
                    f"{full!r} is a folder, where the runner writes its file {name}; the "
                    "runner never deletes a folder it did not make. Move or remove that "
                    "folder, then run the same command again",
                )

    def _read_manifest(self) -> dict[str, dict]:
        """The manifest's entries. Entries of the wrong shape are dropped (their files are
        recomputed); an entry naming a path outside the folder is refused."""
        if not os.path.lexists(self.file(MANIFEST)):
            return {}
        try:
            manifest = read_plain_json(self.file(MANIFEST))
        except ValueError:
            manifest = None
        if not isinstance(manifest, dict):
            self.log(f"run folder: {MANIFEST} is damaged; every stage will be recomputed")
            return {}
        entries = {}
        for name, entry in manifest.items():
            self.inside(name, f"{MANIFEST} entry")
            if not runner_file(name):
                self.log(
                    f"run folder: {MANIFEST} entry {name!r} names no file the runner writes; "
                    "ignored (that file is never read or deleted)"
                )
                continue
            fields_ok = isinstance(entry, dict) and all(
                isinstance(entry.get(k), str) or (k != "sha256" and entry.get(k) is None)
                for k in ("sha256", "checkpoint", "inputs")
            )
            if fields_ok:
                entries[name] = entry
            else:
                self.log(
                    f"run folder: {MANIFEST} entry {name!r} is damaged ({entry!r}); its "
                    "file will be recomputed"
                )
        return entries

    def inside(self, name: str, what: str = "path") -> str:
        """The full path of ``name``, refused unless it stays inside the run folder: a
        relative path with no ``..`` whose folder, links resolved, is the run folder's."""
        ok = isinstance(name, str) and name and "\0" not in name and not os.path.isabs(name)
        if ok:
            parts = os.path.normpath(name).split(os.sep)
            ok = ".." not in parts and parts != ["."]
        full = os.path.join(self.path, name) if ok else ""
        if ok:
            root = os.path.realpath(self.path)
            parent = os.path.realpath(os.path.dirname(full))
            ok = os.path.commonpath([root, parent]) == root
        if not ok:
            raise ValueError(
                f"{what} {name!r} in the run folder {self.path!r} points outside it; the "
                "runner reads and deletes only inside its folder. Remove that entry (or "
                f"delete {MANIFEST}: every stage is then recomputed) and run again"
            )
        return full

    def clear(self, keep_training: bool = False) -> None:
        """Remove what the runner wrote: its top-level files and the files its manifest
        records, only regular files inside the folder (a link is never followed or
        removed); a subfolder goes only when nothing else is left in it. With
        ``keep_training``, the trained model (:data:`TRAINING_FILES`) and its manifest
        entries stay."""
        manifest = self._read_manifest()
        kept = {k: v for k, v in manifest.items() if keep_training and k in TRAINING_FILES}
        for name in (*manifest, *TOP_LEVEL_FILES):
            if name in kept or (keep_training and name in TRAINING_FILES):
                continue
            full = self.inside(name)
            with contextlib.suppress(OSError):  # gone, or not a file: nothing to delete
                if stat.S_ISREG(os.lstat(full).st_mode):
                    os.remove(full)
        for sub in SUBFOLDERS:
            with contextlib.suppress(OSError):  # not empty: the user's files stay
                os.rmdir(self.file(sub))
        if kept:
            self.manifest = kept
            self._write_manifest()

    def close(self) -> None:
        """Release the folder's lock."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- files -----------------------------------------------------------------------------

    def file(self, *parts: str) -> str:
        """The path of ``parts`` inside the run folder."""
        return os.path.join(self.path, *parts)

    def has(self, *parts: str) -> bool:
        """Whether ``parts`` exists inside the run folder."""
        return os.path.exists(self.file(*parts))

    def digest(self, fields: Sequence[str], **extra) -> str:
        """The inputs digest of a stage output that depends on the config ``fields`` (and
        ``extra``) and on the plug-in sources (see :func:`config_digest`)."""
        return config_digest(self.config, *self.sources, fields=fields, **extra)

    def _write_manifest(self) -> None:
        io.atomic_write_bytes(
            self.file(MANIFEST), json.dumps(self.manifest, indent=1, sort_keys=True).encode()
        )

    def record(self, name: str, inputs: str | None = None) -> str:
        """Note ``name``'s digest, the checkpoint it was computed from (None for the
        checkpoint itself) and its ``inputs`` (default: the whole config's digest);
        returns the file's digest."""
        digest = sha256(self.file(name))
        self.manifest[name] = {
            "sha256": digest,
            "checkpoint": self.checkpoint_digest,
            "inputs": inputs or self.inputs,
        }
        self._write_manifest()
        return digest

    def valid(self, name: str, inputs: str | None = None) -> bool:
        """Whether ``name`` exists, is intact, and was computed from the current checkpoint
        and ``inputs`` (a stage's digest, see :meth:`digest`; default: the whole config's).
        A file recorded with the whole config's digest is valid for every stage."""
        try:
            mode = os.lstat(self.file(name)).st_mode
        except OSError:
            return False
        if not stat.S_ISREG(mode):
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a plain file"
            self.log(f"run folder: {name} is {what}, not the runner's; recomputing it")
            return False
        entry = self.manifest.get(name)
        if entry is None:
            self.log(f"run folder: {name} has no recorded checksum; recomputing it")
            return False
        if sha256(self.file(name)) != entry.get("sha256"):
            self.log(
                f"run folder: {name} does not match its recorded checksum (damaged, or "
                "changed outside the runner); recomputing it"
            )
            return False
        if entry.get("inputs") not in (inputs or self.inputs, self.inputs):
            self.log(
                f"run folder: {name} was computed from another config or plug-in code; "
                "recomputing it"
            )
            return False
        if entry.get("checkpoint") != self.checkpoint_digest:
            self.log(f"run folder: {name} was computed from another checkpoint; recomputing it")
            return False
        return True

    def read_json(
        self,
        name: str,
        check: Callable[[Any], str | None] = lambda _: None,
        inputs: str | None = None,
    ):
        """The JSON value of ``name`` if the file verifies (:meth:`valid` with ``inputs``)
        and ``check`` finds nothing wrong with it (``check`` returns a problem or None);
        otherwise None, logging why, so the caller recomputes it."""
        if not self.valid(name, inputs):
            return None
        try:
            value = read_plain_json(self.file(name))
            problem = check(value)
        except ValueError as e:
            return self._unreadable(name, str(e))
        if problem is not None:
            return self._unreadable(name, problem)
        return value

    def read_npz(
        self,
        name: str,
        keys: Sequence[str] = (),
        inputs: str | None = None,
        check: Callable[[dict[str, np.ndarray]], str | None] = lambda _: None,
    ) -> dict[str, np.ndarray] | None:
        """Every array of the ``.npz`` ``name`` if the file verifies (with ``inputs``),
        holds ``keys`` and ``check`` finds nothing wrong with them (it returns a problem or
        None); otherwise None, logging why. Nothing is unpickled: object arrays are
        refused."""
        if not self.valid(name, inputs):
            return None
        try:
            with np.load(self.file(name), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            return self._unreadable(name, str(e))
        missing = [k for k in keys if k not in arrays]
        if missing:
            return self._unreadable(name, f"no array {', '.join(missing)}")
        problem = check(arrays)
        if problem is not None:
            return self._unreadable(name, problem)
        return arrays

    def _unreadable(self, name: str, problem: str) -> None:
        """Log why the file ``name`` is not used (it is recomputed); None."""
        self.log(f"run folder: {name} is not what the runner writes ({problem}); recomputing it")

    def write_json(self, name: str, obj, inputs: str | None = None) -> None:
        """``obj`` as JSON at ``name`` (relative), recorded in the manifest."""
        self.refuse_folders([name])
        write_json(self.file(name), obj)
        self.record(name, inputs)

    def save_npz(
        self, name: str, arrays: Mapping[str, np.ndarray], inputs: str | None = None
    ) -> None:
        """``arrays`` as ``.npz`` at ``name`` (relative), recorded in the manifest."""
        self.refuse_folders([name])
        save_npz(self.file(name), arrays)
        self.record(name, inputs)


__all__ = [
    "TRAIN_FIELDS",
    "TRAINING_FILES",
    "config_changes",
    "LOCK_FILE",
    "MANIFEST",
    "SUBFOLDERS",
    "TOP_LEVEL_FILES",
    "RUN_MARKER",
    "RunFolder",
    "RunFolderBusyError",
    "config_digest",
    "save_npz",
    "sha256",
    "to_jsonable",
    "write_json",
]

"""Output files: checked before a run, locked for its duration, never left half-written.

- :func:`check_output_path`: the destination's folder exists (or is created) and is writable, and the name
  is not a folder; called before the model loads, so a run does not fail after minutes of work.
- :func:`claim`: holds the output path for the run. A second run writing the same path, in this process or
  another, is refused with a clear message instead of silently overwriting the first one's result. The
  lock is a file in the temporary folder named by a hash of the output path, locked with ``flock``
  (``msvcrt`` on Windows) and removed when the run ends; a killed run's lock file is not locked any more
  and is taken over (and removed) by the next run. (Runs on other computers writing to a shared folder
  are not seen.)
- :func:`sweep_partials`: while the path is held, the hidden ``.<name>.<id>.partial.tif`` files of a
  killed earlier run of the same output are stale: they are removed.
- :func:`gdal_failure`: a GDAL error as one line naming the file and the cause (disk full, permission).
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
import threading
from typing import Dict, Iterator, List, Optional, Sequence

from .errors import ThorOutputError

PARTIAL_SUFFIX = ".partial.tif"
LOCK_SUFFIX = ".thor-lock"
#: Less free space than this after a failed write means the disk is full.
FULL_DISK_BYTES = 16 * 1024 * 1024

_REGISTRY_LOCK = threading.Lock()
_HELD: Dict[str, dict] = {}  # normalised path -> {"thread": id, "count": n, "fd": file descriptor, "lock": path}


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(os.fspath(path))))


def partial_pattern(path: str) -> str:
    d, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(glob.escape(d), "." + glob.escape(name) + ".*" + PARTIAL_SUFFIX)


def lock_path(path: str) -> str:
    """The lock file of an output: in the temporary folder, named by a hash of the output's real path, so
    that nothing is added beside the user's files."""
    import hashlib

    d = os.path.join(tempfile.gettempdir(), "thor_qgis_locks")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, hashlib.sha1(_norm(path).encode("utf-8")).hexdigest()[:24] + LOCK_SUFFIX)


def free_bytes(folder: str) -> Optional[int]:
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def check_output_path(path: str, extensions: Sequence[str] = ()) -> str:
    """The absolute output path, after checking that it can be written (ThorOutputError otherwise)."""
    if path is None or not str(path).strip():
        raise ThorOutputError("no output file was given")
    p = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if extensions and os.path.splitext(p)[1].lower() not in tuple(e.lower() for e in extensions):
        raise ThorOutputError(f"the output {p} must be a file ending in {' or '.join(extensions)}")
    if os.path.isdir(p):
        raise ThorOutputError(f"the output {p} is a folder: give a file name")
    folder = os.path.dirname(p)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ThorOutputError(f"cannot create the output folder {folder}: {_os_reason(e)}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".thor-write-test-")
    except OSError as e:
        raise ThorOutputError(f"cannot write in the output folder {folder}: {_os_reason(e)}. Choose another "
                              "output location") from None
    os.close(fd)
    os.remove(probe)
    if os.path.exists(p) and not os.access(p, os.W_OK) and not os.access(folder, os.W_OK):
        raise ThorOutputError(f"the existing output {p} cannot be replaced: permission denied")
    return p


def _os_reason(e: OSError) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EROFS:
        return "the file system is read-only"
    if e.errno == errno.ENOSPC:
        return "the disk is full"
    return e.strerror or str(e)


def gdal_failure(exc: BaseException, path: str, action: str = "writing") -> ThorOutputError:
    """One line for a GDAL (or OS) error while ``action`` ``path``: the file, and the cause in words."""
    path = os.path.abspath(os.fspath(path))
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None:
        cause = _os_reason(exc)
    else:
        free = free_bytes(os.path.dirname(path))
        if free is not None and free < FULL_DISK_BYTES:
            cause = f"the disk is full ({free / 1e6:.1f} MB free)"
        elif not os.access(os.path.dirname(path), os.W_OK):
            cause = "permission denied"
        else:
            cause = f"GDAL: {detail}"
    return ThorOutputError(f"{action} {path} failed: {cause}. Nothing was written there.")


def remove_quietly(paths: Sequence[str]) -> None:
    for p in paths:
        try:
            os.remove(p)
        except OSError:
            pass


def sweep_partials(path: str, keep: Sequence[str] = ()) -> List[str]:
    """Remove the hidden partial files (and their .aux.xml) that earlier runs of ``path`` left; returns them.
    Only call it while holding ``path`` (:func:`claim`): then no other run is writing them."""
    keep_set = {os.path.abspath(k) for k in keep}
    removed = []
    for p in glob.glob(partial_pattern(path)):
        if os.path.abspath(p) in keep_set:
            continue
        remove_quietly([p, p + ".aux.xml"])
        removed.append(p)
    return removed


def _os_lock(fd: int) -> bool:
    try:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False


def _busy(path: str) -> ThorOutputError:
    return ThorOutputError(f"another run is writing {os.path.abspath(path)} right now: wait for it to finish, "
                           "or choose another output file")


def acquire(path: str) -> None:
    """Hold ``path`` (re-entrant within one thread); ThorOutputError if another run holds it."""
    key = _norm(path)
    me = threading.get_ident()
    with _REGISTRY_LOCK:
        held = _HELD.get(key)
        if held is not None:
            if held["thread"] != me:
                raise _busy(path)
            held["count"] += 1
            return
        lp = lock_path(path)
        try:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ThorOutputError(f"cannot create the lock file {lp}: {_os_reason(e)}") from None
        if not _os_lock(fd):
            os.close(fd)
            raise _busy(path)
        _HELD[key] = {"thread": me, "count": 1, "fd": fd, "lock": lp}
    sweep_partials(path)


def release(path: str) -> None:
    key = _norm(path)
    with _REGISTRY_LOCK:
        held = _HELD.get(key)
        if held is None:
            return
        held["count"] -= 1
        if held["count"] > 0:
            return
        del _HELD[key]
        remove_quietly([held["lock"]])  # removed while still locked: a waiting run then finds no file
        os.close(held["fd"])


def is_held(path: str) -> bool:
    with _REGISTRY_LOCK:
        return _norm(path) in _HELD


@contextlib.contextmanager
def claim(path: str, extensions: Sequence[str] = ()) -> Iterator[str]:
    """Check ``path`` (:func:`check_output_path`) and hold it until the block ends; yields the absolute path."""
    p = check_output_path(path, extensions)
    acquire(p)
    try:
        yield p
    finally:
        release(p)

"""File locks that let several launches of one study share a runs folder: each model is trained, and each result
computed, once.

Every stage holds an exclusive ``flock`` beside its folder or result while it works (:func:`held`): a second process
that needs the same stage (another launch of the study, a re-submission while the first array still runs) waits, then
finds the stage done and reads it. Training stages lock per rank (each rank of a DDP job its own file), so the ranks of
one job never wait for each other, and a second job's rank r waits for the first job's rank r.

``flock`` is only as good as the file system under the runs folder. On a local disk it is exact. NFS (v4, or v3 with
the lock manager) carries it between machines unless the mount keeps locks on the client (``nolock``,
``local_lock=flock`` or ``local_lock=all``); Lustre needs the ``flock`` mount option (``localflock`` is per node);
where locking is off, ``flock`` fails outright. :func:`lock_warning` finds these cases when a study is launched, so
that the user hears it before two launches train one model at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# Per-node locks only: mount options that keep flock on the client, by file system type.
LOCAL_ONLY = {
    "nfs": ("nolock", "local_lock=flock", "local_lock=all"),
    "nfs4": ("local_lock=flock", "local_lock=all"),
}


@contextlib.contextmanager
def held(lock_path: Path, what: str) -> Iterator[None]:
    """An exclusive lock on ``lock_path`` for the block; says so in the log when it has to wait for another process
    (``what`` names the work the lock guards)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"waiting for {what}: another process holds {lock_path}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mount_of(path: Path, mounts: str) -> tuple[str, str, set[str]] | None:
    """(mount point, type, options) of the mount holding ``path``, from ``/proc/mounts`` text: the longest mount
    point that contains it."""
    best: tuple[str, str, set[str]] | None = None
    resolved = str(path.resolve())
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[0])):
            best = (point, fields[2], set(fields[3].split(",")))
    return best


def lock_warning(folder: Path, mounts: str | None = None) -> str | None:
    """Why file locks in ``folder`` would not keep two launches apart, or None when they will (as far as this
    machine can tell). ``mounts``: ``/proc/mounts``'s text (read when None)."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".lock-probe"
    try:
        with open(probe, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            return f"file locks do not work in {folder} ({os.strerror(exc.errno or 0)})"
        raise
    finally:
        probe.unlink(missing_ok=True)
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    found = mount_of(folder, mounts)
    if found is None:
        return None
    point, kind, options = found
    local = [o for o in LOCAL_ONLY.get(kind, ()) if o in options]
    if local:
        return f"{folder} is on {kind} mounted with {local[0]} at {point}: file locks hold on this machine only"
    if kind == "lustre" and "flock" not in options:
        return f"{folder} is on Lustre at {point} without the flock mount option: file locks hold on this machine only"
    return None

"""Durable atomic file writes and the cache root shared by lvm's caches
(data bits, checkpoints, ground truth)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Root of lvm's on-disk caches: ``cache_dir``, else ``$LVM_CACHE_DIR``, else ``~/.cache/lvm-bench``."""
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get("LVM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "lvm-bench"


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory``; skipped where directories cannot be opened or synced."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, then rename: never half a file.

    The data is flushed and fsynced before the rename and the directory after
    it, so a crash leaves either the old file or the complete new one, never
    an empty file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cache files are shareable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)

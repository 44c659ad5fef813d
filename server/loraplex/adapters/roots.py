"""Server-side adapter folders (``POST /v1/adapters/load``): only under ``--adapter-roots``,
only regular files, read once into a private copy.

Resolving the folder is not enough: a folder under a root whose files are symbolic links to
elsewhere would be read (and copied into the store) through them. So every entry of the folder
is checked without following links (``lstat``; a link, device or FIFO is refused), and the files
are opened with ``O_NOFOLLOW`` relative to the folder's own descriptor, then copied into a
staging folder that the registry validates and stores. Swapping a file for a link after the
check changes nothing: the registry never reads the root itself.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from loraplex.adapters.errors import AdapterPathError, AdapterValidationError

_CHUNK = 1 << 20
_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang us


def check_path(path: str, roots: Sequence[str]) -> Path:
    """The resolved folder, if it lies under one of ``roots`` (else a 403 naming the option)."""
    folder = Path(path).resolve()
    for root in roots:
        if folder.is_relative_to(Path(root).resolve()):
            return folder
    raise AdapterPathError(f"{path!r} is not under any --adapter-roots folder")


def copy_from_root(folder: Path, dest: Path, max_bytes: int) -> Path:
    """Copy the regular files of ``folder`` (resolved, under a root) into ``dest``/adapter.

    Sub-folders are recreated empty (their names still count for the folder check). Refuses,
    with a 403, any entry that is a symbolic link or not a regular file or folder, and with a
    400 a folder whose files exceed ``max_bytes`` together (the upload cap).
    """
    out = dest / "adapter"
    out.mkdir()
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise AdapterValidationError(f"{folder.name!r} is not an adapter folder") from exc
    try:
        total = 0
        for name in sorted(os.listdir(dir_fd)):
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                (out / name).mkdir()
                continue
            if not stat.S_ISREG(mode):
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
                raise AdapterPathError(
                    f"{name!r} in {str(folder)!r} is {kind}; adapter folders under "
                    "--adapter-roots must hold regular files only"
                )
            total += _copy_file(dir_fd, name, out / name, max_bytes - total, folder)
    finally:
        os.close(dir_fd)
    return out


def _copy_file(dir_fd: int, name: str, target: Path, budget: int, folder: Path) -> int:
    """Copy one file opened without following links; returns its size."""
    try:
        fd = os.open(name, _NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:  # replaced by a link (ELOOP) or removed since the listing
        raise AdapterPathError(f"{name!r} in {str(folder)!r} cannot be read safely") from exc
    with os.fdopen(fd, "rb") as src, target.open("xb") as out:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AdapterPathError(f"{name!r} in {str(folder)!r} is not a regular file")
        copied = 0
        while chunk := src.read(_CHUNK):
            copied += len(chunk)
            if copied > budget:
                raise AdapterValidationError(
                    f"the files of {str(folder)!r} exceed the limit of --max-upload-mb"
                )
            out.write(chunk)
    return copied

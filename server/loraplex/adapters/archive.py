"""Unpack an uploaded adapter archive (zip or tar.gz) safely.

Archives are hostile input: member names can point outside the destination (absolute paths,
``..``), members can be links or devices, and declared sizes can lie (zip/gzip bombs). So nothing
here calls ``extractall``: members are checked (name, type, declared size, count) and streamed
one by one, counting the bytes actually produced, and only the two adapter files are written,
under fixed names chosen here, never under a name taken from the archive.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Generator
from contextlib import closing
from pathlib import Path
from typing import IO

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE, Limits, refuse_pickles

MAX_MEMBERS = 16
WANTED = (CONFIG_FILE, WEIGHTS_FILE)
_CHUNK = 1 << 20
# What zipfile / tarfile / gzip raise on a corrupt or unsupported archive.
_DAMAGED = (
    zipfile.BadZipFile,
    tarfile.TarError,
    gzip.BadGzipFile,
    EOFError,
    zlib.error,
    NotImplementedError,
)
_MAX_ENTRY_BYTES = 4096  # one central-directory entry: 46 bytes + name + extra + comment
# One member: (normalized path parts, declared size, opener); None parts = a directory.
Member = tuple[tuple[str, ...] | None, int, Callable[[], IO[bytes]]]


def _parts(name: str) -> tuple[str, ...]:
    """A member name as path components; refuses anything that could leave the destination."""
    if not name or "\0" in name or "\\" in name:
        raise AdapterValidationError(f"archive member {name!r}: invalid name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise AdapterValidationError(f"archive member {name!r}: absolute paths are not allowed")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise AdapterValidationError(f"archive member {name!r}: '..' is not allowed")
    return parts


def _check_declared(name: str, size: int, total: int, limits: Limits) -> int:
    if size > limits.max_file_bytes:
        raise AdapterValidationError(
            f"archive member {name!r}: {size} bytes exceeds the limit of {limits.max_file_bytes}"
        )
    if total + size > limits.max_body_bytes:
        raise AdapterValidationError(f"archive unpacks to more than {limits.max_body_bytes} bytes")
    return total + size


def _check_zip_directory(path: Path) -> None:
    """Read the end-of-central-directory record before zipfile does: zipfile parses the whole
    central directory into memory, so a directory with millions of entries is refused here."""
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - (1 << 16) - 22))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise AdapterValidationError("the zip archive has no end-of-central-directory record")
    if at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":
        raise AdapterValidationError("ZIP64 archives are not accepted (adapters are far smaller)")
    count = int.from_bytes(tail[at + 10 : at + 12], "little")
    directory_bytes = int.from_bytes(tail[at + 12 : at + 16], "little")
    if count > MAX_MEMBERS or directory_bytes > MAX_MEMBERS * _MAX_ENTRY_BYTES:
        raise AdapterValidationError(f"archive has more than {MAX_MEMBERS} members")


def _zip_members(path: Path, limits: Limits) -> Generator[Member, None, None]:
    """Members of a zip, from its central directory (bounded by the check above)."""
    _check_zip_directory(path)
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise AdapterValidationError(f"archive has more than {MAX_MEMBERS} members")
        for info in infos:
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise AdapterValidationError(
                    f"archive member {info.filename!r}: links and special files are not allowed"
                )
            if info.flag_bits & 0x1:
                raise AdapterValidationError(f"archive member {info.filename!r} is encrypted")
            parts = None if info.is_dir() else _parts(info.filename)
            yield parts, info.file_size, lambda info=info: archive.open(info)


class _Bounded:
    """A read-only stream that fails once more than ``limit`` bytes came out (gzip bombs)."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self.raw, self.left = raw, limit

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if size >= 0 else self.left + 1)
        self.left -= len(data)
        if self.left < 0:
            raise AdapterValidationError("archive unpacks to more bytes than allowed")
        return data


def _tar_members(path: Path, limits: Limits) -> Generator[Member, None, None]:
    """Members of a tar.gz, streamed: the decompressed stream itself is bounded."""
    bound = limits.max_body_bytes + (MAX_MEMBERS + 2) * 2048  # data + headers and padding
    with (
        gzip.open(path, "rb") as raw,
        tarfile.open(fileobj=_Bounded(raw, bound), mode="r|") as archive,
    ):
        for count, info in enumerate(archive, start=1):
            if count > MAX_MEMBERS:
                raise AdapterValidationError(f"archive has more than {MAX_MEMBERS} members")
            if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
                raise AdapterValidationError(
                    f"archive member {info.name!r}: links, devices and special files are not "
                    "allowed"
                )
            parts = None if info.isdir() else _parts(info.name)
            yield parts, info.size, lambda info=info: archive.extractfile(info)


def _copy(source: IO[bytes], target: Path, name: str, declared: int, limits: Limits) -> int:
    """Stream one member to ``target``; refuses more bytes than declared or than the limit."""
    written, cap = 0, min(declared, limits.max_file_bytes)
    with target.open("xb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > cap:
                raise AdapterValidationError(f"archive member {name!r} is larger than declared")
            out.write(chunk)
    return written


def _layout(staged: dict[tuple[str, ...], Path]) -> tuple[str, ...]:
    """The folder holding the adapter: the top level, or one single top-level folder."""
    if (CONFIG_FILE,) in staged or (WEIGHTS_FILE,) in staged:
        roots = {()}
    else:
        roots = {parts[:1] for parts in staged}
    if len(roots) != 1:
        raise AdapterValidationError(
            "the archive must hold the adapter files at its top level or in one top-level folder"
        )
    root = roots.pop()
    for name in WANTED:
        if (*root, name) not in staged:
            raise AdapterValidationError(f"the archive has no {name}")
    return root


def _members(archive: Path, limits: Limits) -> Generator[Member, None, None]:
    with archive.open("rb") as f:
        magic = f.read(4)
    if magic in (b"PK\x03\x04", b"PK\x05\x06"):
        return _zip_members(archive, limits)
    if magic[:2] == b"\x1f\x8b":
        return _tar_members(archive, limits)
    raise AdapterValidationError("the upload is neither a zip nor a tar.gz archive")


def _stage(archive: Path, dest: Path, limits: Limits) -> dict[tuple[str, ...], Path]:
    """Check every member; stream each candidate adapter file to a temporary name in ``dest``."""
    staged: dict[tuple[str, ...], Path] = {}
    seen: set[tuple[str, ...]] = set()
    total = 0
    with closing(_members(archive, limits)) as members:  # closes the archive even on error
        for parts, size, opener in members:
            if parts is None:
                continue
            name = "/".join(parts)
            if parts in seen:
                raise AdapterValidationError(f"archive member {name!r} appears twice")
            seen.add(parts)
            refuse_pickles(f"archive member {name!r}", parts[-1])
            total = _check_declared(name, size, total, limits)
            if len(parts) <= 2 and parts[-1] in WANTED:
                staged[parts] = dest / f".part-{len(staged)}"
                with opener() as source:
                    _copy(source, staged[parts], name, size, limits)
    return staged


def extract_archive(archive: Path, dest: Path, limits: Limits) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` from ``archive`` into
    ``dest`` (missing or empty); other members (README.md ...) are ignored.

    Refused (AdapterValidationError): absolute names, ``..``, links, devices, more than
    MAX_MEMBERS members, a member over ``max_file_bytes`` or a total over ``max_body_bytes``
    (declared or actually produced), and layouts other than the two files at the top level or
    in one top-level folder. On any error, ``dest`` is left as it was.
    """
    if archive.stat().st_size > limits.max_body_bytes:
        raise AdapterValidationError(f"the archive is larger than {limits.max_body_bytes} bytes")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    if not created and any(dest.iterdir()):
        raise ValueError(f"{dest} must be empty")
    try:
        staged = _stage(archive, dest, limits)
        root = _layout(staged)
        for name in WANTED:
            os.replace(staged.pop((*root, name)), dest / name)
        for leftover in staged.values():  # candidates outside the adapter folder
            leftover.unlink()
    except BaseException as exc:
        for path in dest.iterdir():  # only this call wrote here
            path.unlink()
        if created:
            dest.rmdir()
        if isinstance(exc, _DAMAGED):
            raise AdapterValidationError(f"the archive is damaged: {exc}") from exc
        raise

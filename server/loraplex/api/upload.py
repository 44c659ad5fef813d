"""Adapter uploads: a streaming ``multipart/form-data`` intake with size caps, into a temp folder.

No cap is checked after the fact: ``Content-Length`` is checked before the first byte is read,
and bytes are counted as the parser consumes them (the body, each part, each part's headers, the
safetensors header length), so a client that sends 10 GB is cut off at the cap. File parts go
straight to files in a fresh temporary folder, which :func:`staged_upload` always removes.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.rules import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Limits,
    refuse_pickles,
)
from loraplex.adapters.tenancy import AdapterId
from loraplex.api.errors import APIError, BodyTooLargeError, to_api_error
from loraplex.api.timeouts import BodyTimeoutError

CONFIG, WEIGHTS, ARCHIVE = "config", "weights", "archive"
FIELDS = ("name", "description", "pinned", "public", "replace")
MAX_FIELD_BYTES = 4096  # one text field (the description is the longest)
MAX_PART_HEADER_BYTES = 8192  # the headers of one part
DRAIN_BYTES = 1 << 20  # after an early error, read at most this much more so the client hears it
TMP_PREFIX = "loraplex-upload-"
UPLOAD_TMP_DIR: str | None = None  # where work folders go; None: the system temp dir


@dataclass(frozen=True)
class Upload:
    """A received upload: ``folder`` holds the two adapter files, or is empty and ``archive``
    holds them (the adapter service unpacks it); ``fields`` the text fields."""

    folder: Path
    fields: dict[str, str]
    archive: Path | None = None


class _Body:
    """The request body as it arrives, counted against ``cap``."""

    def __init__(self, request: Request, cap: int) -> None:
        self._chunks = request.stream().__aiter__()
        self.cap, self.read, self.done = cap, 0, False

    async def next(self) -> bytes | None:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self.done = True
            return None
        except ClientDisconnect as exc:
            self.done = True
            raise APIError(400, "the client disconnected during the upload") from exc
        self.read += len(chunk)
        if self.read > self.cap:
            raise BodyTooLargeError(f"the request body exceeds the limit of {self.cap} bytes")
        return chunk

    async def drain(self, budget: int) -> bool:
        """Read and drop up to ``budget`` more bytes; True if the body ended."""
        start = self.read
        try:
            while self.read - start <= budget and await self.next() is not None:
                pass
        except APIError:  # the client left: nothing more to read
            return True
        except BodyTooLargeError:
            return False
        return self.done


class _Parts:
    """python_multipart callbacks: every part goes to its file or field buffer, counted."""

    def __init__(self, workdir: Path, limits: Limits) -> None:
        adapter = workdir / "adapter"
        adapter.mkdir()
        self.folder = adapter
        self.targets = {
            CONFIG: (adapter / CONFIG_FILE, limits.max_config_bytes),
            WEIGHTS: (adapter / WEIGHTS_FILE, limits.max_file_bytes),
            ARCHIVE: (workdir / "upload.archive", limits.max_body_bytes),
        }
        self.max_header = limits.max_header_bytes
        self.fields: dict[str, str] = {}
        self.seen: set[str] = set()
        self.pending: list[tuple[BinaryIO, bytes]] = []  # written off the event loop
        self.handles: list[BinaryIO] = []
        self.ended = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._key, self._value, self._header_bytes = b"", b"", 0
        self._name, self._size, self._data = "", 0, bytearray()
        self._file: BinaryIO | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._header(d[s:e], None),
            "on_header_value": lambda d, s, e: self._header(None, d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": lambda: setattr(self, "ended", True),
        }

    def on_part_begin(self) -> None:
        self._headers, self._header_bytes = [], 0
        self._name, self._size, self._data, self._file = "", 0, bytearray(), None

    def _header(self, key: bytes | None, value: bytes | None) -> None:
        self._header_bytes += len(key or value or b"")
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise BodyTooLargeError(f"a part's headers exceed {MAX_PART_HEADER_BYTES} bytes")
        self._key += key or b""
        self._value += value or b""

    def on_header_end(self) -> None:
        self._headers.append((self._key.lower(), self._value))
        self._key, self._value = b"", b""

    def on_headers_finished(self) -> None:
        disposition = next((v for k, v in self._headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name not in self.targets and name not in FIELDS:
            expected = ", ".join((*FIELDS, *self.targets))
            raise APIError(400, f"unexpected form part {name!r}; the parts are: {expected}")
        if name in self.seen:
            raise APIError(400, f"form part {name!r} appears twice", param=name)
        self.seen.add(name)
        self._name = name
        filename = options.get(b"filename", b"").decode("utf-8", "replace")
        if name == WEIGHTS:
            refuse_pickles(f"weights {filename!r}", filename)
        if name in self.targets:
            self._file = self.targets[name][0].open("xb")
            self.handles.append(self._file)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        cap = self.targets[self._name][1] if self._file is not None else MAX_FIELD_BYTES
        before, self._size = self._size, self._size + end - start
        if self._size > cap:
            raise BodyTooLargeError(f"form part {self._name!r} exceeds the limit of {cap} bytes")
        if self._file is None:
            self._data += data[start:end]
            return
        self.pending.append((self._file, data[start:end]))
        if self._name == WEIGHTS and before < 8:  # safetensors: u64 header length first
            self._data += data[start : min(end, start + 8 - before)]
            if len(self._data) == 8 and int.from_bytes(self._data, "little") > self.max_header:
                length = int.from_bytes(self._data, "little")
                raise AdapterValidationError(
                    f"{WEIGHTS_FILE}: header of {length} bytes exceeds the limit of "
                    f"{self.max_header}"
                )

    def on_part_end(self) -> None:
        if self._file is not None:
            return
        try:
            value = self._data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise APIError(400, f"field {self._name!r} is not UTF-8", param=self._name) from exc
        if self._name == "name":
            AdapterId.parse(value)  # fail early, before the files arrive (name or tenant/name)
        self.fields[self._name] = value

    def flush(self) -> None:
        for handle, data in self.pending:
            handle.write(data)
        self.pending.clear()


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise APIError(400, "the upload must be multipart/form-data (with a boundary)")
    return options[b"boundary"]


async def _receive(request: Request, body: _Body, workdir: Path, limits: Limits) -> Upload:
    parts = _Parts(workdir, limits)
    try:
        parser = MultipartParser(_boundary(request), parts.callbacks())
        while (chunk := await body.next()) is not None:
            parser.write(chunk)
            if parts.pending:
                await asyncio.to_thread(parts.flush)
        parser.finalize()
        parts.flush()
    except FormParserError as exc:
        raise APIError(400, f"malformed multipart body: {exc}") from exc
    finally:
        for handle in parts.handles:
            handle.close()
    if not parts.ended:
        raise APIError(400, "the multipart body ended before its closing boundary")
    files = parts.seen & set(parts.targets)
    if files not in ({CONFIG, WEIGHTS}, {ARCHIVE}):
        message = "send either two file parts, config and weights, or one archive part"
        raise APIError(400, message, param=ARCHIVE)
    archive = parts.targets[ARCHIVE][0] if ARCHIVE in files else None
    return Upload(parts.folder, parts.fields, archive)


@asynccontextmanager
async def staged_upload(request: Request, limits: Limits) -> AsyncIterator[Upload]:
    """Receive the upload into a temp folder; the folder is removed when the block exits.

    Errors before the body ended read at most :data:`DRAIN_BYTES` more (so the client hears the
    answer) and otherwise answer with ``Connection: close``; over-cap bodies are never read on.
    """
    cap = limits.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise APIError(400, f"invalid Content-Length {length!r}", headers={"Connection": "close"})
    if length is not None and int(length) > cap:
        raise BodyTooLargeError(f"the request body of {length} bytes exceeds the limit of {cap}")
    workdir = Path(
        await asyncio.to_thread(lambda: tempfile.mkdtemp(prefix=TMP_PREFIX, dir=UPLOAD_TMP_DIR))
    )
    try:
        body = _Body(request, cap)
        try:
            upload = await _receive(request, body, workdir, limits)
        except Exception as exc:
            over = isinstance(exc, (BodyTooLargeError, BodyTimeoutError))  # never read on
            if body.done or (not over and await body.drain(DRAIN_BYTES)):
                raise
            err = to_api_error(exc, request)
            err.headers = {**(err.headers or {}), "Connection": "close"}
            raise err from exc
        yield upload
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)

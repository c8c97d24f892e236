"""Receive a dataset upload from the request stream, enforcing the size limit while the bytes arrive.

FastAPI's `UploadFile` lets Starlette spool the whole body to a temporary file before the
handler runs, so a client that sends no Content-Length (chunked) or a false one could make
the server store any amount. Here the multipart body is parsed as it streams in
(python-multipart's push parser): the `file` part goes straight into a `datasets.Spool`,
and the request is refused with 413 as soon as the body passes the limit (plus room for the
multipart framing), whatever the headers said.
"""

from __future__ import annotations

from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from tunelab.studio.datasets import Spool, too_large
from tunelab.studio.paths import Settings, StudioError

FRAMING = 65536  # multipart boundaries and part headers on top of the file itself
FIELD = b"file"


class _Parts:
    """Callbacks for MultipartParser: the first part named `file` (with a filename) goes into a Spool."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.spool: Spool | None = None
        self.done = False
        self._writing = False
        self._field, self._value, self._headers = b"", b"", {}

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._on_field, "on_header_value": self._on_value,
                "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
                "on_part_data": self._data, "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers = {}

    def _on_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") == FIELD and self.spool is None:
            filename = options.get(b"filename", b"").decode("utf-8", errors="replace")
            self.spool = Spool(self.settings, filename)
            self._writing = True

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._writing and self.spool is not None:
            self.spool.write(data[start:end])

    def _end(self) -> None:
        if self._writing:
            self._writing, self.done = False, True


async def receive_upload(request: Request, settings: Settings) -> Path:
    """Parse a multipart upload (field `file`) from the stream into the library; 413 once it passes the limit."""
    kind, options = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise StudioError("send the file as multipart/form-data in a field named 'file' "
                          "(curl -F file=@data.jsonl ...)")
    limit = settings.max_upload_bytes + FRAMING
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(settings, "the upload")  # refused before a byte of the body is read
    parts = _Parts(settings)
    parser = MultipartParser(options[b"boundary"], parts.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large(settings, parts.spool.filename if parts.spool else "the upload")
            parser.write(chunk)
        parser.finalize()
        if parts.spool is None or not parts.done:
            raise StudioError("no complete 'file' field in the upload; send it as multipart/form-data with "
                              "field name 'file'")
        return await run_in_threadpool(parts.spool.admit)
    except MultipartParseError as e:
        raise StudioError(f"the upload is not valid multipart/form-data ({e})") from None
    finally:
        if parts.spool is not None:
            parts.spool.close()

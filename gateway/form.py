"""The upload form, read as it streams in: small fields kept, the file passed on.

Why not Starlette's ``request.form()``: it spools the file to a temporary file (past
1 MiB) and hands it over only once the last byte is in. Reading that file in chunks
would bound memory too, but it costs disk equal to the upload on the pod's ``/tmp``
emptyDir (counted against the node's ephemeral storage, once per concurrent upload)
and the object store write could start only after the client finished sending, so a
2 GiB upload would take the sending time plus the bucket's. Here python-multipart's
push parser (the one Starlette uses) is fed the body as it arrives and the file part
goes straight to an :class:`~.uploads.AudioStream`: no disk, memory a few parts, and
the bucket write overlaps the transfer. A slow bucket back-pressures the client.

Order of refusals within the body: the size (413) is counted on every chunk, before
anything is stored; the first :data:`~.sniff.HEAD_BYTES` of the file are sniffed
(400) before any byte reaches the store; the fields are checked by the caller once the
body is read, and a refusal then discards what was streamed.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from .errors import HttpError
from .sniff import HEAD_BYTES, sniff_audio
from .upload_stream import Audio, AudioStream, TooLarge

#: Room for the multipart framing and the small fields around the file.
FORM_OVERHEAD = 64 * 1024
#: Fields beside the file (OpenAI's form has ten).
MAX_FIELDS = 32
#: The field that carries the audio, and the one that names a presigned upload instead.
FILE_FIELD, UPLOAD_FIELD = "file", "upload_id"


def too_large(limit: int) -> HttpError:
    return HttpError(413, f"the upload is larger than the gateway's limit of {limit} bytes "
                          "(KUBESCRIBE_GATEWAY_MAX_UPLOAD_BYTES)", code="file_too_large", param="file")


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)


class FormReader:
    """One multipart/form-data body: the fields as a dict (``name[]`` fields as lists)
    and the ``file`` part fed to ``sink``.

    python-multipart's callbacks are synchronous; they queue events and :meth:`read`
    handles them (awaiting the sink) after each body chunk, as Starlette's parser does.
    """

    def __init__(self, request: Request, sink: AudioStream):
        self.request, self.sink = request, sink
        self.fields: dict[str, Any] = {}
        self.filename: str | None = None
        self.file_seen = False
        self._events: list[tuple[str, Any]] = []
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._count = 0
        self._head = bytearray()
        self._sniffed = False
        self._charset = "utf-8"
        # For the file's length, forecast from the body's: the chunk being parsed, the
        # body's bytes before it, the body's length and the closing delimiter's.
        self._chunk = b""
        self._before = 0
        self._length: int | None = None
        self._closing = 0
        self._file_started = False

    # -- python-multipart callbacks (synchronous) ---------------------------------------
    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._part.headers.append((self._header_name.lower(), self._header_value))
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        disposition = next((v for k, v in self._part.headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise HttpError(400, 'cannot read the form: a part has no Content-Disposition name', param="file")
        self._part.name = options[b"name"].decode(self._charset, "replace")
        if b"filename" in options:
            self._part.filename = options[b"filename"].decode(self._charset, "replace")
        if self._part.name == FILE_FIELD:
            if self.file_seen:
                raise HttpError(400, "send one `file`: the form has two", param="file")
            self.file_seen = True
            self.filename = self._part.filename
        elif self._part.filename is not None:
            raise HttpError(400, f"unexpected file field {self._part.name!r}: send the audio as `file`", param="file")
        else:
            self._count += 1
            if self._count > MAX_FIELDS:
                raise HttpError(400, f"the form has more than {MAX_FIELDS} fields")
        self._events.append(("begin", self._part))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part.name == FILE_FIELD:
            if not self._file_started:
                self._file_started = True
                if self._length is not None and data is self._chunk:
                    # Right when the file is the form's last part (clients put files after
                    # fields) and the form ends "--boundary--" CRLF, as clients write it.
                    self._events.append(("expect", self._length - self._before - start - self._closing))
            self._events.append(("file", data[start:end]))
        else:
            if len(part.data) + end - start > FORM_OVERHEAD:
                raise HttpError(400, f"the form field {part.name!r} is longer than {FORM_OVERHEAD} bytes",
                                param=part.name)
            part.data += data[start:end]

    def _on_part_end(self) -> None:
        part = self._part
        if part.name == FILE_FIELD:
            self._events.append(("file_end", None))
            return
        value = bytes(part.data).decode(self._charset, "replace")
        if part.name.endswith("[]"):
            self.fields.setdefault(part.name, []).append(value)
        else:
            self.fields[part.name] = value

    # -- the body -----------------------------------------------------------------------
    async def read(self, limit: int) -> None:
        """Read the body to its end; HttpError (400, 413) or ClientDisconnect otherwise.
        The caller discards the sink on any exception."""
        _, params = parse_options_header(self.request.headers.get("content-type"))
        charset = params.get(b"charset", b"utf-8").decode("latin-1")
        try:
            self._charset = codecs.lookup(charset).name
        except LookupError:
            self._charset = "latin-1"
        boundary = params.get(b"boundary")
        if not boundary:
            raise HttpError(400, "cannot read the form: multipart/form-data without a boundary", param="file")
        parser = MultipartParser(boundary, {
            "on_part_begin": self._on_part_begin, "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end, "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value, "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished})
        length = self.request.headers.get("content-length", "")
        self._length = int(length) if length.isdigit() else None
        self._closing = len(b"\r\n--" + boundary + b"--\r\n")
        seen = 0
        try:
            async for chunk in self.request.stream():
                self._before, self._chunk = seen, chunk
                seen += len(chunk)
                if seen > limit + FORM_OVERHEAD:
                    raise too_large(limit)
                try:
                    parser.write(chunk)
                except HttpError:
                    raise
                except Exception as exc:  # python-multipart's parse errors
                    raise HttpError(400, f"cannot read the form: {exc}", param="file") from None
                await self._drain()
            try:
                parser.finalize()
            except Exception as exc:
                raise HttpError(400, f"cannot read the form: {exc}", param="file") from None
            await self._drain()
        except TooLarge:
            raise too_large(limit) from None
        except ClientDisconnect:
            raise

    async def _drain(self) -> None:
        events, self._events = self._events, []
        for kind, value in events:
            if kind == "expect":
                self.sink.expect(value)
            elif kind == "file":
                if self._sniffed:
                    await self.sink.write(value)
                else:
                    self._head += value
                    if len(self._head) >= HEAD_BYTES:
                        await self._sniff()
            elif kind == "file_end" and not self._sniffed:
                await self._sniff()

    async def _sniff(self) -> None:
        """Refuse what is not audio on its first bytes, before any byte is stored."""
        head, self._head = bytes(self._head), bytearray()
        if not head:
            raise HttpError(400, "the uploaded file is empty", param="file", code="empty_file")
        if sniff_audio(head[:HEAD_BYTES]) is None:
            raise HttpError(400, f"{self.filename or 'the file'} is not audio (no known audio or video "
                                 "container: wav, mp3, flac, ogg/opus, m4a/mp4, webm, ...)",
                            param="file", code="invalid_file_format")
        self._sniffed = True
        await self.sink.write(head)


async def read_upload(request: Request, sink: AudioStream, limit: int) -> tuple[dict[str, Any], Audio | None]:
    """The form's fields and the accepted audio (None when the form names an
    ``upload_id`` instead of carrying a ``file``); refused early when too large or not
    audio. On any exception the sink has been discarded (nothing left in the bucket)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + FORM_OVERHEAD:
        raise too_large(limit)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/x-www-form-urlencoded"):
        return await _read_urlencoded(request), None
    if not ctype.startswith("multipart/form-data"):
        raise HttpError(400, "send the audio as multipart/form-data with a `file` field", param="file")
    reader = FormReader(request, sink)
    try:
        await reader.read(limit)
        if reader.file_seen and reader.fields.get(UPLOAD_FIELD):
            raise HttpError(400, "send either `file` or `upload_id`, not both", param="upload_id")
        if not reader.file_seen:
            if reader.fields.get(UPLOAD_FIELD):
                return reader.fields, None
            raise HttpError(400, "the `file` field with the audio is missing (or name a presigned upload "
                                 "with `upload_id`)", param="file")
        return reader.fields, await sink.finish()
    except BaseException:
        await sink.discard()
        raise


async def _read_urlencoded(request: Request) -> dict[str, Any]:
    """A form without a file (``upload_id`` and the other fields), urlencoded."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_OVERHEAD:
            raise HttpError(400, f"a form without a file is at most {FORM_OVERHEAD} bytes")
    from urllib.parse import parse_qsl

    fields: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        if key.endswith("[]"):
            fields.setdefault(key, []).append(value)
        else:
            fields[key] = value
    if not fields.get(UPLOAD_FIELD):
        raise HttpError(400, "the `file` field with the audio is missing: send multipart/form-data, or name "
                             "a presigned upload with `upload_id`", param="file")
    return fields

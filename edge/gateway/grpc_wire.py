"""A lean gRPC client for unary calls: the gRPC wire protocol over HTTP/2 on an asyncio connection.

grpc.aio's client hands every call between the event loop and grpc's poller thread. On the 2-core bench
machine that costs about 540 µs of the gateway's CPU per call: an aiohttp front answering canned JSON
took 150 µs per request, 687 µs with one grpc.aio call to a canned-reply server (docs/benchmarks.md).
This client writes and reads the frames itself: HPACK literals for the request headers, the `hpack`
package for the server's header blocks, flow control both ways, SETTINGS, PING, RST_STREAM, GOAWAY and
per-call deadlines. It carries unary calls only, bytes in and bytes out, over plaintext HTTP/2 (the
gateway and the decision server share a host or a private network).
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import struct
import time
import urllib.parse
from collections.abc import Sequence

import grpc
import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">I B I")  # length << 8 | type, flags, stream id
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 1, 2, 3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 4, 5
NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x1, 0x7, 0x8

DEFAULT_WINDOW = 65_535
DEFAULT_FRAME_SIZE = 16_384
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
RECEIVE_WINDOW = 16 * 1024 * 1024
"""Each stream's receive window, which is also the largest reply message accepted."""
CONNECTION_TOP_UP = 256 * 1024 * 1024
"""Received bytes after which the connection's receive window is raised back to the maximum."""

STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
HTTP_TO_GRPC = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}
"""gRPC's mapping of an HTTP status without a grpc-status (a proxy or a server that is not gRPC)."""


class CallError(Exception):
    """A call that did not end with grpc-status OK, shaped like grpc's errors (`code()`, `details()`)."""

    def __init__(self, code: grpc.StatusCode, details: str, *, unreachable: bool = False) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self.unreachable = unreachable
        """True when no connection to the server could be made or the connection was lost."""

    def code(self) -> grpc.StatusCode:
        """The call's status code."""
        return self._code

    def details(self) -> str:
        """The server's status message (or this client's, for a transport failure)."""
        return self._details


def _integer(value: int, prefix_bits: int, first_byte: int) -> bytes:
    """HPACK's integer representation (RFC 7541, 5.1) with the first byte's high bits set to `first_byte`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    out = bytearray((first_byte | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7, 0) + value


def literal_header(name: bytes, value: bytes, static_index: int = 0) -> bytes:
    """One header as an HPACK literal without indexing, its name from the static table when `static_index`."""
    if static_index:
        return _integer(static_index, 4, 0) + _string(value)
    return b"\x00" + _string(name) + _string(value)


def _frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return FRAME_HEADER.pack(len(payload) << 8 | frame_type, flags, stream_id) + payload


def _timeout_header(seconds: float) -> bytes:
    milliseconds = max(1, min(99_999_999, round(seconds * 1000)))
    return literal_header(b"grpc-timeout", b"%dm" % milliseconds)


HEADER_MEMO_SIZE = 64


class HeaderDecoder:
    """hpack's Decoder with a memo of the header blocks that leave its dynamic table as it was.

    A gRPC server answers every call with the same few fields once its dynamic table holds them (e.g.
    ``88 c0 bf``, and ``be`` plus an empty grpc-message literal), and decoding those with hpack costs about
    12 µs a block. Such a block means the same until the table changes, so its decoding is kept until a
    block that adds entries or resizes the table arrives; then the memo is emptied.
    """

    def __init__(self) -> None:
        self._decoder = hpack.Decoder()
        self._memo: dict[bytes, list[tuple[bytes, bytes]]] = {}

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The (name, value) pairs of one header block, as bytes."""
        headers = self._memo.get(block)
        if headers is not None:
            return headers
        table = self._decoder.header_table
        entries = table.dynamic_entries
        count, newest, size = len(entries), entries[0] if entries else None, table.maxsize
        headers = self._decoder.decode(block, raw=True)
        # An added entry is a new object at the front; an eviction or a resize changes the count or the size.
        if len(entries) == count and table.maxsize == size and (entries[0] if entries else None) is newest:
            if len(self._memo) >= HEADER_MEMO_SIZE:
                self._memo.clear()
            self._memo[block] = headers
        else:
            self._memo.clear()
        return headers


class _Stream:
    __slots__ = ("future", "headers_seen", "message", "send_window", "timer", "unsent")

    def __init__(self, future: asyncio.Future, unsent: memoryview, send_window: int) -> None:
        self.future = future
        self.message = bytearray()
        self.headers_seen = False
        self.unsent = unsent
        self.send_window = send_window
        self.timer: asyncio.TimerHandle | None = None


class Connection(asyncio.Protocol):
    """One HTTP/2 connection carrying concurrent unary gRPC calls."""

    def __init__(self, authority: str) -> None:
        self._authority_header = literal_header(b":authority", authority.encode(), 1)
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._decoder = HeaderDecoder()
        self._streams: dict[int, _Stream] = {}
        self._waiting_to_open: collections.deque = collections.deque()
        self._next_stream_id = 1
        self._header_block: bytearray | None = None
        self._header_stream = 0
        self._header_flags = 0
        self._send_window = DEFAULT_WINDOW
        self._peer_stream_window = DEFAULT_WINDOW
        self._peer_frame_size = DEFAULT_FRAME_SIZE
        self._peer_max_streams = MAX_STREAM_ID
        self._received = 0
        self._blocked: dict[int, _Stream] = {}
        self.closed = False
        """No new calls: the connection is lost, or going away (GOAWAY, stream ids used up)."""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        settings = struct.pack(
            ">HIHIHI",
            SETTINGS_ENABLE_PUSH,
            0,
            SETTINGS_INITIAL_WINDOW_SIZE,
            RECEIVE_WINDOW,
            SETTINGS_HEADER_TABLE_SIZE,
            4096,
        )
        top_up = struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)
        self._transport.write(PREFACE + _frame(SETTINGS, 0, 0, settings) + _frame(WINDOW_UPDATE, 0, 0, top_up))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        reason = f"connection to the server lost: {exc}" if exc else "the server closed the connection"
        self._fail_all(lambda _stream_id: True, reason)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset, size = 0, len(buffer)
        try:
            while size - offset >= 9:
                length_type, flags, stream_id = FRAME_HEADER.unpack_from(buffer, offset)
                length = length_type >> 8
                if length > DEFAULT_FRAME_SIZE:
                    raise ConnectionError(f"frame of {length} bytes exceeds the advertised maximum")
                end = offset + 9 + length
                if end > size:
                    break
                self._on_frame(length_type & 0xFF, flags, stream_id & MAX_STREAM_ID, bytes(buffer[offset + 9 : end]))
                offset = end
        except (ConnectionError, hpack.HPACKError, struct.error, ValueError) as exc:
            self._abort(f"protocol error from the server: {exc}")
            return
        del buffer[:offset]

    # calls

    def call(self, path_header: bytes, message: bytes, timeout: float, metadata: bytes) -> asyncio.Future:
        """Start a unary call; the future resolves to the reply message or raises CallError."""
        future = asyncio.get_running_loop().create_future()
        payload = memoryview(b"\x00" + struct.pack(">I", len(message)) + message)
        stream = _Stream(future, payload, self._peer_stream_window)
        stream.timer = asyncio.get_running_loop().call_later(timeout, self._expire, stream, timeout)
        if len(self._streams) >= self._peer_max_streams:
            self._waiting_to_open.append((path_header, timeout, metadata, stream))
        else:
            self._open(path_header, timeout, metadata, stream)
        return future

    def cancel(self, future: asyncio.Future) -> None:
        """Reset the stream of a call whose caller stopped waiting."""
        for stream_id, stream in self._streams.items():
            if stream.future is future:
                self._finish(stream_id, None)
                self._write(_frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)))
                return

    def retire(self) -> None:
        """Take no new calls, and close once the calls in flight are answered."""
        self.closed = True
        if not self._streams and self._transport is not None:
            self._transport.close()

    def close(self) -> None:
        """Send GOAWAY and close; calls in flight fail with UNAVAILABLE."""
        if self._transport is not None:
            self._transport.write(_frame(GOAWAY, 0, 0, struct.pack(">II", 0, NO_ERROR)))
            self._transport.close()
        self.closed = True

    def _open(self, path_header: bytes, timeout: float, metadata: bytes, stream: _Stream) -> None:
        if stream.future.done():
            return
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        if self._next_stream_id > MAX_STREAM_ID:
            self.closed = True
        block = (
            b"\x83\x86"  # :method POST, :scheme http (static table entries 3 and 6)
            + path_header
            + self._authority_header
            + b"\x0f\x10\x10application/grpc"  # content-type (static entry 31)
            + b"\x00\x02te\x08trailers"
            + _timeout_header(timeout)
            + metadata
        )
        self._streams[stream_id] = stream
        self._send_data(stream_id, stream, _frame(HEADERS, END_HEADERS, stream_id, block))

    def _send_data(self, stream_id: int, stream: _Stream, headers: bytes = b"") -> None:
        """Send (after `headers`) as much of the request message as both flow-control windows allow."""
        frames = [headers]
        unsent = stream.unsent
        while unsent:
            size = min(len(unsent), self._peer_frame_size, self._send_window, stream.send_window)
            if size <= 0:
                break
            chunk, unsent = unsent[:size], unsent[size:]
            self._send_window -= size
            stream.send_window -= size
            frames.append(_frame(DATA, 0 if unsent else END_STREAM, stream_id, chunk.tobytes()))
        stream.unsent = unsent
        if unsent:
            self._blocked[stream_id] = stream
        else:
            self._blocked.pop(stream_id, None)
        if len(frames) > 1 or headers:
            self._write(b"".join(frames))

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _expire(self, stream: _Stream, timeout: float) -> None:
        error = CallError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no reply within {timeout:g} s")
        for stream_id, open_stream in self._streams.items():
            if open_stream is stream:
                self._finish(stream_id, error)
                self._write(_frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)))
                return
        if not stream.future.done():  # still waiting to open
            stream.future.set_exception(error)

    def _finish(self, stream_id: int, error: CallError | None, reply: bytes | None = None) -> None:
        stream = self._streams.pop(stream_id)
        self._blocked.pop(stream_id, None)
        if stream.timer is not None:
            stream.timer.cancel()
        if not stream.future.done():
            if error is None:
                if reply is not None:
                    stream.future.set_result(reply)
            else:
                stream.future.set_exception(error)
        while self._waiting_to_open and len(self._streams) < self._peer_max_streams and not self.closed:
            self._open(*self._waiting_to_open.popleft())
        if self.closed and not self._streams and self._transport is not None:
            self._transport.close()

    def _fail_all(self, which, reason: str) -> None:
        error = CallError(grpc.StatusCode.UNAVAILABLE, reason, unreachable=True)
        for stream_id in [stream_id for stream_id in self._streams if which(stream_id)]:
            self._finish(stream_id, error)
        if self.closed:
            while self._waiting_to_open:
                stream = self._waiting_to_open.popleft()[3]
                if stream.timer is not None:
                    stream.timer.cancel()
                if not stream.future.done():
                    stream.future.set_exception(error)

    def _abort(self, reason: str) -> None:
        self.closed = True
        self._fail_all(lambda _stream_id: True, reason)
        if self._transport is not None:
            self._transport.write(_frame(GOAWAY, 0, 0, struct.pack(">II", 0, PROTOCOL_ERROR)))
            self._transport.close()

    # frames

    def _on_frame(self, frame_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and frame_type != CONTINUATION:
            raise ConnectionError("a header block was interrupted by another frame")
        if frame_type == DATA:
            self._on_data(flags, stream_id, payload)
        elif frame_type == HEADERS:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._header_block, self._header_stream, self._header_flags = bytearray(payload), stream_id, flags
            if flags & END_HEADERS:
                self._on_header_block()
        elif frame_type == CONTINUATION:
            if self._header_block is None or stream_id != self._header_stream:
                raise ConnectionError("CONTINUATION without a header block to continue")
            self._header_block += payload
            if flags & END_HEADERS:
                self._on_header_block()
        elif frame_type == SETTINGS:
            if not flags & ACK:
                self._on_settings(payload)
        elif frame_type == PING:
            if not flags & ACK:
                self._write(_frame(PING, ACK, 0, payload))
        elif frame_type == WINDOW_UPDATE:
            self._on_window_update(stream_id, struct.unpack(">I", payload)[0] & MAX_WINDOW)
        elif frame_type == RST_STREAM:
            if stream_id in self._streams:
                (error_code,) = struct.unpack(">I", payload)
                self._finish(stream_id, _reset_error(error_code))
        elif frame_type == GOAWAY:
            last_stream_id, error_code = struct.unpack_from(">II", payload)
            self.closed = True
            self._fail_all(
                lambda sid: sid > last_stream_id & MAX_STREAM_ID,
                f"the server is going away (GOAWAY, error code {error_code})",
            )
            if not self._streams and self._transport is not None:
                self._transport.close()
        elif frame_type == PUSH_PROMISE:
            raise ConnectionError("PUSH_PROMISE although push is disabled")

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._received += len(payload)
        if self._received >= CONNECTION_TOP_UP:
            self._write(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._received)))
            self._received = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        stream.message += payload
        if flags & END_STREAM:
            self._finish(stream_id, CallError(grpc.StatusCode.INTERNAL, "the reply ended without a grpc-status"))

    def _on_header_block(self) -> None:
        block, stream_id, flags = self._header_block, self._header_stream, self._header_flags
        self._header_block = None
        headers = self._decoder.decode(bytes(block))  # always, to keep the HPACK table in step
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        fields = dict(headers)
        if not stream.headers_seen:
            stream.headers_seen = True
            http_status = fields.get(b":status", b"")
            if http_status != b"200":
                if b"grpc-status" not in fields:
                    code = HTTP_TO_GRPC.get(int(http_status or 0), grpc.StatusCode.UNKNOWN)
                    self._finish(stream_id, CallError(code, f"HTTP status {http_status.decode()} from the server"))
                    return
            elif not fields.get(b"content-type", b"").startswith(b"application/grpc") and b"grpc-status" not in fields:
                self._finish(stream_id, CallError(grpc.StatusCode.UNKNOWN, "the reply is not gRPC"))
                return
        if flags & END_STREAM:
            self._on_trailers(stream_id, stream, fields)

    def _on_trailers(self, stream_id: int, stream: _Stream, fields: dict[bytes, bytes]) -> None:
        status = fields.get(b"grpc-status")
        code = STATUS_BY_NUMBER.get(int(status), grpc.StatusCode.UNKNOWN) if status else grpc.StatusCode.UNKNOWN
        if code is not grpc.StatusCode.OK:
            details = urllib.parse.unquote(fields.get(b"grpc-message", b"").decode("utf-8", "replace"))
            self._finish(stream_id, CallError(code, details or f"no grpc-status in the reply ({status!r})"))
            return
        message = stream.message
        if len(message) < 5 or message[0] != 0 or struct.unpack_from(">I", message, 1)[0] != len(message) - 5:
            self._finish(stream_id, CallError(grpc.StatusCode.INTERNAL, "the reply is not one uncompressed message"))
            return
        self._finish(stream_id, None, bytes(message[5:]))

    def _on_settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self._peer_stream_window
                self._peer_stream_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self._peer_frame_size = value
            elif key == SETTINGS_MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
        self._write(_frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _on_window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            self._send_window += increment
        elif (stream := self._streams.get(stream_id)) is not None:
            stream.send_window += increment
        self._flush_blocked()

    def _flush_blocked(self) -> None:
        for stream_id, stream in list(self._blocked.items()):
            self._send_data(stream_id, stream)


def _reset_error(error_code: int) -> CallError:
    if error_code == REFUSED_STREAM:
        return CallError(grpc.StatusCode.UNAVAILABLE, "the server refused the stream")
    if error_code == CANCEL:
        return CallError(grpc.StatusCode.CANCELLED, "the server cancelled the call")
    return CallError(grpc.StatusCode.INTERNAL, f"the server reset the stream (HTTP/2 error code {error_code})")


class Channel:
    """One target's connection, opened on the first call, again after it is lost, and renewed after `max_age`.

    Several server processes may share the target's port (SO_REUSEPORT), and the kernel picks one of them
    per connection. Renewing connections (after `max_age` seconds, give or take a tenth) spreads them again,
    so a process that joins later, such as a restarted one, gets calls.
    """

    def __init__(self, host: str, port: int, max_age: float = math.inf) -> None:
        self._host, self._port = host, port
        self._authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._max_age = max_age
        self._connection: Connection | None = None
        self._connecting: asyncio.Future | None = None
        self._renew_at = math.inf

    async def call(self, path: str, message: bytes, timeout: float, metadata: Sequence[tuple[str, str]] = ()) -> bytes:
        """Call the unary method `path` (e.g. /aura.v1.DecisionService/Rank) and return the reply's bytes."""
        connection = self._connection
        if connection is None or connection.closed or time.monotonic() >= self._renew_at:
            if connection is not None:
                connection.retire()
            connection = await self._connect(timeout)
        future = connection.call(_path_header(path), message, timeout, _metadata_block(metadata))
        try:
            return await future
        except asyncio.CancelledError:
            connection.cancel(future)
            raise

    async def _connect(self, timeout: float) -> Connection:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open_connection())
        try:
            return await asyncio.wait_for(asyncio.shield(self._connecting), timeout)
        except (TimeoutError, OSError) as exc:
            raise CallError(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot connect to {self._authority}: {exc or 'timed out'}",
                unreachable=True,
            ) from None

    async def _open_connection(self) -> Connection:
        try:
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(lambda: Connection(self._authority), self._host, self._port)
            self._connection = connection
            self._renew_at = time.monotonic() + self._max_age * random.uniform(0.9, 1.1)
            return connection
        finally:
            self._connecting = None

    def close(self) -> None:
        """Close the connection; calls in flight fail with UNAVAILABLE."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


_PATH_HEADERS: dict[str, bytes] = {}


def _path_header(path: str) -> bytes:
    header = _PATH_HEADERS.get(path)
    if header is None:
        header = _PATH_HEADERS[path] = literal_header(b":path", path.encode(), 4)
    return header


def _metadata_block(metadata: Sequence[tuple[str, str]]) -> bytes:
    return b"".join(literal_header(name.lower().encode(), value.encode()) for name, value in metadata)

"""The least a Python PostgreSQL relay must do: the "relay" target of the benchmark.

    python -m benchmarks.relay --listen 127.0.0.1:PORT --upstream HOST:PORT

uvloop and asyncio Protocols; one upstream TCP connection per client connection (no pooling,
no authentication of its own: the startup packet and SCRAM pass through, end to end). It
frames both directions like a proxy that looks at messages must: each side keeps a buffer,
walks the complete messages by their length word and forwards only whole messages, one
`transport.write` per received chunk, keeping a partial tail for the next chunk. It answers
an SSLRequest (and a GSSENCRequest) itself with b"N": it does no TLS. It reads nothing inside
the messages, rewrites nothing, checks nothing: it is the floor of a Python proxy, not one.
"""

from __future__ import annotations

import argparse
import asyncio
import struct

import uvloop

SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104  # codes of the 8-byte encryption requests
MAX_STARTUP = 10_000  # PostgreSQL's own limit on the startup packet
INT32 = struct.Struct("!i").unpack_from


class Side(asyncio.Protocol):
    """One end of a relayed connection; `peer` is the Side of the other end."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.buf = bytearray()  # the start of a message not yet complete

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Typed messages (1 type byte + int32 length including itself): forward the whole
        ones in one write, keep the partial tail."""
        if self.buf:  # a partial message from an earlier chunk comes first
            self.buf += data
            data = self.buf
        end, size = 0, len(data)
        while size - end >= 5:
            length = INT32(data, end + 1)[0]
            if length < 4:
                return self.close("bad message length")
            if end + 1 + length > size:
                break
            end += 1 + length
        if end:
            self.peer.transport.write(data if end == size else data[:end])
        if end < size:  # a new buffer each time: the one just written is never changed
            self.buf = bytearray(data[end:])
        elif self.buf:
            self.buf = bytearray()

    # Backpressure: while our transport's write buffer is full, stop reading the other side.
    def pause_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.close()  # flushes what is buffered, then closes

    def close(self, why: str) -> None:
        print(f"relay: closing a connection: {why}", flush=True)
        self.transport.close()


class ServerSide(Side):
    """The upstream connection to PostgreSQL: typed messages from the first byte."""


class ClientSide(Side):
    """A client connection: untyped messages (int32 length, int32 code) until the startup
    packet, typed ones after it. Its upstream connection is opened when it connects."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream
        self.started = False  # the startup packet has been forwarded

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # until the upstream connection is there to write to
        # (uvloop may still deliver a first chunk: data_received keeps it until then)
        self.connecting = asyncio.get_running_loop().create_task(self.connect())  # keep a ref

    async def connect(self) -> None:
        server = ServerSide()
        server.peer = self
        try:
            await asyncio.get_running_loop().create_connection(lambda: server, *self.upstream)
        except OSError as exc:
            return self.close(f"upstream {exc}")
        self.peer = server
        if self.transport.is_closing():  # the client left while we were connecting
            server.transport.close()
            return
        self.transport.resume_reading()
        if self.buf:  # what came before the upstream connection was there
            early, self.buf = bytes(self.buf), bytearray()
            self.data_received(early)

    def data_received(self, data: bytes) -> None:
        if self.started:
            return super().data_received(data)
        self.buf += data
        if self.peer is None:
            return  # not connected upstream yet: connect() goes on from here
        while not self.started and len(self.buf) >= 8:
            length, code = struct.unpack_from("!ii", self.buf)
            if length == 8 and code in (SSL_REQUEST, GSSENC_REQUEST):
                del self.buf[:8]
                self.transport.write(b"N")  # "not supported": the client goes on in plain text
            elif not 8 <= length <= MAX_STARTUP:
                return self.close("bad startup packet length")
            elif len(self.buf) < length:
                return  # wait for the rest of the startup packet
            else:  # the startup packet (or a CancelRequest): forward it as it is
                self.peer.transport.write(bytes(self.buf[:length]))
                del self.buf[:length]
                self.started = True
        if self.started and self.buf:  # typed messages that came in the same chunk
            rest, self.buf = bytes(self.buf), bytearray()
            super().data_received(rest)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientSide(upstream), *listen, backlog=4096)
    print(f"relay: listening on {listen[0]}:{listen[1]}", flush=True)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_address, required=True, help="127.0.0.1:PORT")
    parser.add_argument("--upstream", type=_address, required=True, help="HOST:PORT")
    args = parser.parse_args()
    if args.listen[0] != "127.0.0.1":
        parser.error("the relay binds 127.0.0.1 only")
    try:
        uvloop.run(serve(args.listen, args.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

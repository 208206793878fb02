"""Fault injectors for infrastructure tests: a probe writer that counts acknowledged appends, a cuttable TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

from eventbot.appender import Appender
from eventbot.connections import redis_client
from eventbot.keys import Keys
from eventbot.tasks import cancel_and_wait
from events import default_codec
from tests import factories


@dataclass
class ProbeWriter:
    """Appends events as fast as Redis acknowledges them, in a namespace nothing consumes.

    Every append that returned is remembered by (stream, entry id): after a Redis
    crash and restart, those missing are what the persistence mode lost of what
    it had acknowledged. An append that failed (Redis down) is retried with the
    same event id, so it is counted only once it is acknowledged.
    """

    redis_url: str
    namespace: str
    # Paced: flat out it shares the test's event loop with the fakes and the users, starving
    # them, and fills Redis with ~a million entries in minutes.
    interval_s: float = 0.002
    acked: list[tuple[str, str]] = field(default_factory=list)
    failures: int = 0

    def __post_init__(self) -> None:
        self.keys = Keys(self.namespace, 4)
        self.redis = redis_client(self.redis_url, max_connections=4)
        self.appender = Appender(self.redis, self.keys, default_codec())
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while True:
            event = factories.message(chat_id=n % 64 + 1, text="probe")
            while True:
                try:
                    appended = await self.appender.append(event)
                    break
                except Exception:  # noqa: BLE001 - Redis is down: the same event again, later
                    self.failures += 1
                    await asyncio.sleep(0.05)
            self.acked.append((appended.stream, appended.entry_id))
            n += 1
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        """Stop writing (idempotent); the client stays open for :meth:`lost`."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def close(self) -> None:
        await self.stop()
        await self.redis.aclose()

    async def lost(self) -> int:
        """Acknowledged appends that Redis no longer has."""
        present: set[tuple[str, str]] = set()
        for stream in self.keys.streams("conv"):
            start = "-"
            while True:
                entries = await self.redis.xrange(stream, min=start, count=5000)
                present.update((stream, e.decode()) for e, _ in entries)
                if len(entries) < 5000:
                    break
                start = f"({entries[-1][0].decode()}"
        return sum(1 for a in self.acked if a not in present)


@dataclass
class TcpProxy:
    """Forwards a local port to ``target``; ``cut()`` drops every connection and refuses new ones until ``restore()``."""

    target_host: str
    target_port: int
    port: int = 0
    cut_count: int = 0
    _server: asyncio.AbstractServer | None = None
    _pipes: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _open: bool = True

    async def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._client, sock=sock)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        a = asyncio.create_task(_pipe(reader, up_writer))
        b = asyncio.create_task(_pipe(up_reader, writer))
        self._pipes.update((a, b))
        await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        for w in (writer, up_writer):
            w.transport.abort()
            self._writers.discard(w)
        for t in (a, b):
            t.cancel()
            self._pipes.discard(t)

    def cut(self) -> None:
        """Like a network partition that resets: every open connection dies, new ones are refused."""
        self._open = False
        self.cut_count += 1
        for w in list(self._writers):
            w.transport.abort()

    def restore(self) -> None:
        self._open = True

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._pipes):
            t.cancel()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

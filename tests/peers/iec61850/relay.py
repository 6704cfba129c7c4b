"""A TCP relay between an MMS client and a real IED that can lose reports and cut links.

It forwards ISO-on-TCP (RFC 1006) frames unchanged, except that it can drop the next
InformationReports (MMS unconfirmed PDUs) whose bytes hold a marker, e.g. the RptID:
the IED sent them, the client never sees them, exactly as a lost report.  ``cut`` closes
every relayed connection (the IED keeps running).  It runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

TPKT_VERSION = 3
MMS_UNCONFIRMED = 0xA3


def _length(data: bytes, at: int) -> tuple[int, int]:
    """A BER length at ``data[at]``: (length, offset of the contents)."""
    first = data[at]
    if first < 0x80:
        return first, at + 1
    count = first & 0x7F
    return int.from_bytes(data[at + 1:at + 1 + count], "big"), at + 1 + count


def is_unconfirmed_pdu(frame: bytes) -> bool:
    """True for a TPKT frame carrying an MMS unconfirmed PDU (an InformationReport).

    Layout: TPKT (4) | COTP DT (3) | session GIVE-TOKENS + DT (4) | presentation
    fully-encoded-data ``61 L 30 L 02 01 <ctx> a0 L`` | MMS PDU.
    """
    try:
        at = 4 + 3 + 4
        if frame[at] != 0x61:
            return False
        _, at = _length(frame, at + 1)
        if frame[at] != 0x30:
            return False
        _, at = _length(frame, at + 1)
        if frame[at] != 0x02:
            return False
        size, at = _length(frame, at + 1)
        at += size
        if frame[at] != 0xA0:
            return False
        _, at = _length(frame, at + 1)
        return frame[at] == MMS_UNCONFIRMED
    except IndexError:
        return False


@dataclass
class LossyRelay:
    """``127.0.0.1:port`` -> the IED at ``127.0.0.1:target``."""

    target: int
    port: int = 0
    dropped: int = 0
    reports: int = 0
    _drop: list[bytes] = field(default_factory=list)  # one marker per report to lose
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def __aenter__(self) -> LossyRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self.cut()
        await self._server.wait_closed()

    def lose(self, marker: bytes, count: int = 1) -> None:
        """Drop the next ``count`` reports whose frame contains ``marker``."""
        self._drop += [marker] * count

    @property
    def losing(self) -> int:
        """Reports still to be dropped."""
        return len(self._drop)

    async def cut(self) -> None:
        """Close every relayed connection at once (both sides see the link die)."""
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._writers.clear()

    async def _accept(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        try:
            ied_r, ied_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, ied_w}
        upstream = asyncio.create_task(self._pipe(client_r, ied_w, lossy=False))
        downstream = asyncio.create_task(self._pipe(ied_r, client_w, lossy=True))
        self._tasks |= {upstream, downstream}
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (upstream, downstream):
                task.cancel()
            for writer in (client_w, ied_w):
                writer.close()
            self._tasks -= {upstream, downstream}
            self._writers -= {client_w, ied_w}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    lossy: bool) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, OSError):
            while True:
                header = await reader.readexactly(4)
                if header[0] != TPKT_VERSION:
                    raise ConnectionError(f"not a TPKT frame: {header!r}")
                body = await reader.readexactly(int.from_bytes(header[2:4], "big") - 4)
                frame = header + body
                if lossy and is_unconfirmed_pdu(frame):
                    self.reports += 1
                    marker = next((m for m in self._drop if m in frame), None)
                    if marker is not None:
                        self._drop.remove(marker)
                        self.dropped += 1
                        continue
                writer.write(frame)
                await writer.drain()

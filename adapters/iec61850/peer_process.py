"""A server IED in a subprocess that speaks JSON lines (a native crash stays in its process).

The process prints ``{"ready": PORT}`` once it listens, then answers each JSON command
on stdin with one JSON line on stdout; lines it prints on its own (for example an
accepted write, ``{"write": ...}``) are kept for ``next_line``.  Closing stdin ends it.

Used by the tests' peers (libiec61850 and ``iec61850`` servers), by ``gridflex bench
iec61850`` and through ``adapters.iec61850.substation`` by the demo.  Blocking calls:
from asyncio code, run ``cmd`` in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Sequence
from typing import Any


class PeerError(RuntimeError):
    """The peer did not start, did not answer, or refused a command."""


class PeerProcess:
    """A server subprocess that prints ``{"ready": PORT}`` and speaks JSON lines."""

    def __init__(self, argv: Sequence[str], *, port: int = 0, port_option: str | None = None,
                 name: str | None = None, timeout_s: float = 10.0) -> None:
        """Start ``argv``; a restart passes the port back with ``port_option`` if given."""
        self.argv = tuple(argv)
        self.port_option = port_option
        self.name = name or os.path.basename(self.argv[-1])
        self.timeout_s = timeout_s
        self.port = port
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None
        self._write_lock = threading.Lock()
        self.start()

    def start(self) -> None:
        """Start (or restart, on the same port if it can) and wait until it listens."""
        cmd = list(self.argv)
        if self.port and self.port_option:
            cmd += [self.port_option, str(self.port)]
        self.lines = queue.Queue()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        threading.Thread(target=self._pump, args=(self.proc, self.lines), daemon=True).start()
        first = self._next()
        if "ready" not in first:
            self.kill()
            raise PeerError(f"{self.name} did not start: {first}")
        self.port = int(first["ready"])

    @staticmethod
    def _pump(proc: subprocess.Popen[str], lines: queue.Queue[dict[str, Any]]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                try:
                    lines.put(json.loads(line))
                except json.JSONDecodeError:
                    lines.put({"noise": line.rstrip("\n")})
        lines.put({"eof": proc.wait()})

    def _next(self) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=self.timeout_s)
        except queue.Empty:
            raise PeerError(f"{self.name} silent for {self.timeout_s} s") from None

    def send(self, **command: Any) -> None:
        """Write one command without waiting for its answer (see ``reply``)."""
        assert self.proc is not None and self.proc.stdin is not None
        with self._write_lock:
            try:
                self.proc.stdin.write(json.dumps(command) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:
                raise PeerError(f"{self.name} is gone: {exc}") from exc

    def reply(self) -> dict[str, Any]:
        """The next answer; raises ``PeerError`` if the peer refused or ended."""
        answer = self._next()
        if not answer.get("ok"):
            raise PeerError(f"{self.name}: {answer}")
        return answer

    def cmd(self, **command: Any) -> Any:
        """Send one command and return its ``value`` (raises if the peer refused)."""
        self.send(**command)
        try:
            return self.reply().get("value")
        except PeerError as exc:
            raise PeerError(f"{command}: {exc}") from None

    def next_line(self) -> dict[str, Any]:
        """The next line the peer printed on its own (e.g. an accepted write)."""
        return self._next()

    def kill(self) -> None:
        """SIGKILL: the connection drops without a goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=self.timeout_s)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        """SIGSTOP: the server hangs (TCP still accepts, nothing answers)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the peer (resumed first if paused): close stdin, then kill if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.proc.kill()
                self.proc.wait(timeout=self.timeout_s)
        elif self.proc.stdin is not None:
            self.proc.stdin.close()

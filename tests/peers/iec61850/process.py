"""Run a peer IED script in its own process (a native crash cannot take pytest down)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
LIBIEC_SERVER = HERE / "libiec_server.py"
RUST_SERVER = HERE / "rust_server.py"


class PeerError(RuntimeError):
    """The peer did not start or did not answer."""


class Peer:
    """A server subprocess that prints ``{"ready": PORT}`` and speaks JSON lines."""

    def __init__(self, script: Path, *args: str, port: int = 0, timeout_s: float = 10.0) -> None:
        self.script = script
        self.args = args
        self.timeout_s = timeout_s
        self.port = port
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        """Start (or restart, on the same port) the server and wait until it listens."""
        cmd = [sys.executable, str(self.script), *self.args]
        if self.port and self.script == LIBIEC_SERVER:
            cmd += ["--port", str(self.port)]
        self.lines = queue.Queue()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        threading.Thread(target=self._pump, args=(self.proc, self.lines), daemon=True).start()
        first = self._next()
        if "ready" not in first:
            raise PeerError(f"{self.script.name} did not start: {first}")
        self.port = int(first["ready"])

    @staticmethod
    def _pump(proc: subprocess.Popen[str], lines: queue.Queue[dict[str, Any]]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                lines.put(json.loads(line))
        lines.put({"eof": proc.wait()})

    def _next(self) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=self.timeout_s)
        except queue.Empty:
            raise PeerError(f"{self.script.name} silent for {self.timeout_s} s") from None

    def cmd(self, **command: Any) -> Any:
        """Send one command and return its ``value`` (raises if the peer refused)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        reply = self._next()
        if not reply.get("ok"):
            raise PeerError(f"{command}: {reply}")
        return reply.get("value")

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
        """Stop the peer (resumed first if paused) and reap it."""
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

"""The test peers' scripts, run through ``adapters.iec61850.peer_process.PeerProcess``."""

from __future__ import annotations

import sys
from pathlib import Path

from adapters.iec61850.peer_process import PeerError, PeerProcess

HERE = Path(__file__).parent
LIBIEC_SERVER = HERE / "libiec_server.py"
RUST_SERVER = HERE / "rust_server.py"

__all__ = ["LIBIEC_SERVER", "RUST_SERVER", "Peer", "PeerError"]


class Peer(PeerProcess):
    """A peer script started with this interpreter; the libiec61850 one restarts on its port."""

    def __init__(self, script: Path, *args: str, port: int = 0, timeout_s: float = 10.0) -> None:
        self.script = script
        super().__init__([sys.executable, str(script), *args], port=port,
                         port_option="--port" if script == LIBIEC_SERVER else None,
                         name=script.name, timeout_s=timeout_s)

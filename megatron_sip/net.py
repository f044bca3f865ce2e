"""Free TCP ports on the loopback interface: for a single-process rendezvous, test servers and
local clusters. A port is free when asked; nothing holds it afterwards, so use it at once."""

from __future__ import annotations

import contextlib
import socket
from typing import List


def free_ports(count: int) -> List[int]:
    """`count` distinct free ports (all bound at once, so the system cannot hand one out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    return free_ports(1)[0]

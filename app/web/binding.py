"""Where this process actually listens: the local addresses of its listening TCP sockets.

Login is decided from these, not from a setting: `uvicorn app.main:app --host 0.0.0.0` never passes through
`loradeck web`, and an empty host listens on every interface. Read from /proc (Linux); elsewhere, or when the
process holds no listening TCP socket (a unix socket, an in-process test client), the caller falls back to
the host setting.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

LISTEN = "0A"  # the TCP state code in /proc/net/tcp


def _socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # The kernel prints each 32-bit word of the address in host (little-endian) byte order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening_addresses() -> list[str]:
    """The local addresses this process listens on over TCP; empty where that cannot be told."""
    try:
        inodes = _socket_inodes()
        found = []
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            path = Path(table)
            if not path.exists():
                continue
            for line in path.read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == LISTEN and fields[9] in inodes:
                    found.append(_address(fields[1].split(":")[0]))
        return found
    except (OSError, ValueError):
        return []

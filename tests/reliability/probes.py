"""Which TCP ports a process listens on, and where (read from ``/proc``, Linux only)."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["listening_sockets", "loopback", "spawned_group_sockets"]


def _address(hex_address: str) -> tuple[str, int]:
    """``0100007F:1F90`` (``/proc/net/tcp``'s host-order hex) → ``("127.0.0.1", 8080)``."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # each 32-bit word is in the machine's byte order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(port, 16)


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """``(address, port)`` of every TCP socket in LISTEN state that process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                found.append(_address(fields[1]))
    return found


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def spawned_group_sockets(local_rank: int) -> Any:
    """Run in each process of an ``m3sgg.engine.distributed.launch`` group: after one collective,
    the listening sockets of this process (rank 0 returns its own; the launcher returns them)."""
    import torch
    import torch.distributed as dist

    dist.all_reduce(torch.ones(1))
    return listening_sockets(os.getpid())

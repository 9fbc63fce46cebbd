"""Is a TCP port free, and if not, who holds it: what `ovr-serve` and `ovr-webui` check first;
and is a host loopback-only (where a service may listen without a key)."""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable from this machine only (what needs no key or login)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_in_use(what: str, host: str, port: int, flag: str) -> str | None:
    """One line saying ``port`` is taken (by whom, when visible) and which free one to pass to
    ``flag`` instead; None when ``host:port`` can be bound."""
    if port_is_free(host, port):
        return None
    holder = port_holder(port)
    by = f" by {holder}" if holder else ""
    return (
        f"port {port} ({what}) is already in use{by}: stop it, or pick another with"
        f" {flag} {free_port_near(host, port)}"
    )


def port_is_free(host: str, port: int) -> bool:
    """Can a server bind ``host:port`` now (as uvicorn does, with SO_REUSEADDR)?"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_holder(port: int) -> str | None:
    """'python3 (pid 1234: ovr-serve --demo)' for the process listening on ``port``, if visible."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if not conn.pid:
                    return None
                proc = psutil.Process(conn.pid)
                argv = proc.cmdline()
                cmd = " ".join([Path(argv[0]).name, *argv[1:]]) if argv else proc.name()
                return f"{proc.name()} (pid {conn.pid}: {cmd[:80]})"
    except Exception:  # psutil missing, or not allowed to look: say less, never fail the check
        return None
    return None


def free_port_near(host: str, port: int) -> int:
    """The first free port above ``port`` (what the one-line fix suggests)."""
    for candidate in range(port + 1, min(port + 200, 65536)):
        if port_is_free(host, candidate):
            return candidate
    return 0

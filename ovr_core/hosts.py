"""Which ``Host`` and ``Origin`` a local service answers: the DNS-rebinding rule that the API guard
(``ovr_serve.guard``) and the web UI (``webui.security``) share.

After DNS rebinding (``evil.example`` resolving to 127.0.0.1) a page in the user's browser reaches
a loopback service as ``Host: evil.example``; refusing every name but the loopback ones, the
address the service listens on and the names it was told (``--allowed_hosts``) closes that door,
as Jupyter and Ollama do. A browser says who is asking in ``Origin`` (``null`` from a sandboxed
frame or a file); non-browser clients send none.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ovr_core.ports import is_loopback

ANY = "*"


def host_name(authority: str) -> str:
    """The host of a ``Host`` header or URL authority: no port, no brackets, no trailing dot, lower
    case (``"[::1]:8000"`` -> ``"::1"``); ``""`` when there is none."""
    authority = authority.strip().lower().rpartition("@")[2]
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        return host if rest in ("",) or rest.startswith(":") else ""
    if authority.count(":") > 1:  # a bare IPv6 address
        return authority
    return authority.partition(":")[0].rstrip(".")


def is_loopback_name(host: str) -> bool:
    """``localhost``, any ``*.localhost`` (RFC 6761) or a loopback address."""
    return host == "localhost" or host.endswith(".localhost") or is_loopback(host)


def listen_names(listen_host: str) -> tuple[str, ...]:
    """The names a client may use for a service listening on ``listen_host`` besides loopback ones:
    the address itself (a wildcard address names no host)."""
    host = host_name(listen_host) or listen_host
    try:
        if ipaddress.ip_address(host).is_unspecified:
            return ()
    except ValueError:
        pass
    return (host,) if host else ()


def host_allowed(host_header: str | None, allowed: Iterable[str]) -> bool:
    """May a request that says ``Host: host_header`` be answered? Loopback names always; the
    ``allowed`` names (``*``: any)."""
    allowed = tuple(allowed)
    if ANY in allowed:
        return True
    host = host_name(host_header or "")
    if not host:
        return False
    return is_loopback_name(host) or host in {host_name(a) or a.lower() for a in allowed}


def origin_allowed(
    origin: str,
    host_header: str | None,
    allowed_origins: Iterable[str],
    allowed_hosts: Iterable[str] | None = None,
) -> bool:
    """May a browser page of ``origin`` send this request? Its own origin (the ``Host`` it sent
    to) and the ``allowed_origins`` (``*``: any); with ``allowed_hosts``, also pages served from
    those hosts and from loopback names (any port). ``null`` only when allowed by name."""
    origin = origin.strip().lower().rstrip("/")
    allowed = {o.strip().lower().rstrip("/") for o in allowed_origins}
    if ANY in allowed or origin in allowed:
        return True
    scheme, sep, authority = origin.partition("://")
    if not sep or scheme not in ("http", "https") or not authority or "/" in authority:
        return False
    if host_header and _same_authority(authority, host_header.strip().lower(), scheme):
        return True
    return allowed_hosts is not None and host_allowed(authority, allowed_hosts)


def _same_authority(origin_authority: str, host_header: str, scheme: str) -> bool:
    default = ":443" if scheme == "https" else ":80"
    strip = lambda a: a[: -len(default)] if a.endswith(default) else a  # noqa: E731
    return strip(origin_authority) == strip(host_header)

"""The PROXY protocol version 2 header (HAProxy's spec, section 2.2), binary form.

A tcp port listed in a service's `proxy_protocol` gets this header ahead of every
connection the mesh or the service's VIP opens to a replica: the client's address and
port, and the address and port it connected to. A backend that reads it (nginx
`listen ... proxy_protocol`, HAProxy `accept-proxy`, PostgreSQL poolers...) sees the
real client instead of the proxy. Addresses of two families, or unknown ones, give the
LOCAL command (no address): the receiver then uses the connection's own.

Pure: no sockets, no asyncio.
"""

from __future__ import annotations

import ipaddress
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
LOCAL = SIGNATURE + b"\x20\x00\x00\x00"  # version 2, LOCAL; UNSPEC; no address


def header(src: object, dst: object) -> bytes:
    """The header for a connection from `src` to `dst` (socket addresses, as
    `get_extra_info("peername")` and `("sockname")` give them; None when unknown)."""
    try:
        s_ip, s_port = ipaddress.ip_address(src[0]), int(src[1])  # type: ignore[index]
        d_ip, d_port = ipaddress.ip_address(dst[0]), int(dst[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return LOCAL
    if s_ip.version != d_ip.version:
        return LOCAL
    family, length = (b"\x11", 12) if s_ip.version == 4 else (b"\x21", 36)  # TCP over IPv4 / IPv6
    return b"".join(
        (
            SIGNATURE,
            b"\x21",
            family,
            struct.pack("!H", length),
            s_ip.packed,
            d_ip.packed,
            struct.pack("!HH", s_port, d_port),
        )
    )

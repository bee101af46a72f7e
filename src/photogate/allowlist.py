"""Which addresses a GPU node may register with (``webhook.allowed_node_networks``, issue 6).

The gateway sends photos and health probes to whatever address a node registers, so a
leaked webhook secret must not turn it into a proxy towards the cloud metadata service
(169.254.169.254), the gateway's own loopback services or another private network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence


def node_address_refused(ip: str, allowed: Sequence[str], *, dev: bool) -> str | None:
    """Why ``ip`` may not be registered, or None when it may."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast or address.is_link_local:
        return f"ip: {ip} is not a node address (unspecified, multicast or link-local addresses are refused)"
    if address.is_loopback and dev:
        return None
    if any(address in ipaddress.ip_network(net, strict=False) for net in allowed):
        return None
    kind = "a loopback" if address.is_loopback else ("a private" if address.is_private else "an")
    return f"ip: {ip} is {kind} address outside webhook.allowed_node_networks"

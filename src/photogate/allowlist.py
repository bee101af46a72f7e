"""Which addresses a GPU node may register with (``webhook.allowed_node_networks``, issues 6, 13).

The gateway sends photos and health probes to whatever address a node registers, so a
leaked webhook secret must not turn it into a proxy towards the cloud metadata service
(169.254.169.254), the gateway's own loopback services or another private network.

An IPv6 address that carries an IPv4 one (mapped ``::ffff:a.b.c.d``, compatible
``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo) is judged by the IPv4
address inside, so no spelling reaches what the plain IPv4 address may not.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def canonical(ip: str) -> Address:
    """The address itself; an IPv4-mapped IPv6 address is the IPv4 address (the same host)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def effective(address: Address) -> Address:
    """The IPv4 address an IPv6 spelling leads to, or the address itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 1):  # NAT64; IPv4-compatible
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's own IPv4 address
    return address


def _never(address: Address) -> str | None:
    if address.is_unspecified or (isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK):
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    if address.is_reserved and not address.is_loopback:
        return "reserved"
    return None


def _listed_explicitly(address: Address, allowed: Sequence[str]) -> bool:
    """A loopback address is allowed outside --dev only by a network that is all loopback."""
    for net in allowed:
        network = ipaddress.ip_network(net, strict=False)
        if address in network and any(
            network.version == lo.version and network.subnet_of(lo)  # type: ignore[arg-type]
            for lo in _LOOPBACK
        ):
            return True
    return False


def node_address_refused(ip: str, allowed: Sequence[str], *, dev: bool) -> str | None:
    """Why ``ip`` may not be registered, or None when it may."""
    given = ipaddress.ip_address(ip)
    address = effective(given)
    via = f" (it carries the IPv4 address {address})" if address != canonical(ip) else ""
    kind = _never(address)
    if kind:
        return (f"ip: {ip} is not a node address{via}: unspecified (0.0.0.0/8), broadcast, link-local "
                f"(169.254.0.0/16, the cloud metadata service), multicast and reserved addresses are refused")
    if address.is_loopback:
        if dev or _listed_explicitly(address, allowed):
            return None
        return (f"ip: {ip} is a loopback address{via}: refused outside --dev unless "
                f"webhook.allowed_node_networks lists a loopback network explicitly (e.g. 127.0.0.1/32)")
    if any(address in ipaddress.ip_network(net, strict=False) for net in allowed):
        return None
    kind = "a private" if address.is_private else "an"
    return f"ip: {ip} is {kind} address outside webhook.allowed_node_networks{via}"

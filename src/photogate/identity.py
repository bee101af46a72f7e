"""Who a registration is: the one identity rule both stores apply (DESIGN §9 "Identity").

A node is its ``node_key``. A leaked webhook secret may add nodes, never take over one:

- the key of an existing node proves it: same id, same token, from any address that is
  not another node's;
- an address held by a keyed node cannot be claimed without that key (no key, or another
  one: a node that lost its state directory included). The operator removes the old id
  (``photogate-admin remove GPU-00N``) and the node then registers as a new id;
- an address held by a keyless node (seed-style ``{ip, port, secret}``) keeps its id, but
  the token is rotated: nobody can prove to be that node, so no caller ever receives the
  token it was using. A key given there is attached (never replaced) and owns it from then on;
- anything else is a new node with a new id.

Offline (unregistered) nodes are kept, so the rule is the same for them: a registration this
rule gives an offline node's id brings that node back online with it (its key from any
address not held by another node, or, keyless, from its own address). An offline keyed node
still holds its address against other keys: offline is not forgotten, and a node that lost
its key is told to have the old id removed, as while it was online. An offline keyless node's
address can be claimed, as an online one's can: nobody can prove to be that node, and the
token is rotated, so no caller gets the token it had. Only an operator's ``remove`` forgets a
node (and frees its address and key).

The stores look the two candidate records up and apply the :class:`Claim` atomically
(SQLite: in one transaction; Redis: compare-and-set on what was looked up).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import NodeIdentityConflict
from .models import NodeRecord


@dataclass(frozen=True)
class Claim:
    """What a registration may do: update ``server_id`` (None: mint a new id)."""

    server_id: str | None
    rotate_token: bool = False
    attach_key: str | None = None


def decide(address: str, node_key: str | None, by_key: NodeRecord | None,
           at_address: NodeRecord | None) -> Claim:
    """The claim a registration of ``address`` with ``node_key`` makes, or
    :class:`NodeIdentityConflict` (409) when it would take over another node."""
    if node_key and by_key is not None:
        if at_address is not None and at_address.server_id != by_key.server_id:
            raise NodeIdentityConflict(
                f"{address} is registered to {at_address.server_id}; {by_key.server_id} cannot move onto "
                f"another node's address. If {at_address.server_id} is gone, an operator removes it first "
                f"(photogate-admin remove {at_address.server_id}), then this node registers again",
                holder=at_address.server_id, reason="address held by another node",
            )
        return Claim(by_key.server_id)
    if at_address is None:
        return Claim(None)
    if at_address.node_key:
        holder = at_address.server_id
        which = "a different node_key" if node_key else "no node_key"
        raise NodeIdentityConflict(
            f"{address} is registered to {holder}, which proved itself with its node_key; a registration "
            f"with {which} cannot take it over. If this is that node, register with its node_key; if it lost "
            f"its state directory (a new node_key), an operator removes the old id first "
            f"(photogate-admin remove {holder}), then it registers as a new id",
            holder=holder, reason="address held by a keyed node",
        )
    return Claim(at_address.server_id, rotate_token=True, attach_key=node_key or None)

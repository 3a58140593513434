"""Say why the SuperLink refused a site's SuperNode: its key is connected already, or it is not registered.

A SuperNode starts by activating its node with its public key (Fleet ``activate-node``, signed with that
key, which Flower's node authentication has verified before the handler runs). Flower 1.42 answers a key
it does not know (never enrolled, revoked) and a key whose node is online already (a second
``fl-client join`` with the same kit) with the same error, code 2004 "Failed to activate SuperNode.", so a
site could only be told "not enrolled or revoked", wrongly in the second case.

:func:`install` wraps the SuperLink's activation handler so that its error carries one of two public
details, which Flower's SuperNode logs after the error (``flwr/supernode/fleet_http_connection.py``) and
``fl-client join`` turns into its message (``client/site_join.py``). The detail goes only to the holder
of the key, who proved it by signing the request, and says only what that key's own node is doing.
Each refusal is also a ``site refused`` entry, naming the key's digest, in the federation's audit log
(:mod:`fedshield.flower_ext.audit_refusals`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from fedshield.flower_ext import audit_refusals
from fedshield.flower_ext.version_check import hook

#: the public detail of an activation refused because the key's node is online already
ALREADY_CONNECTED = "FedShield: this key's node is already connected from another SuperNode"
#: the public detail of an activation refused because the SuperLink has no node for the key
NOT_REGISTERED = "FedShield: this key is not registered with the SuperLink"


def explain(error: Any, key_registered: bool) -> None:
    """Add the public detail to Flower's activation ``error`` (a ``FlowerError`` of code 2004)."""
    error.public_details = ALREADY_CONNECTED if key_registered else NOT_REGISTERED


def install() -> None:
    """In the SuperLink's process: every refused node activation says which of the two causes it was."""
    from flwr.supercore.error import ApiErrorCode, FlowerError
    from flwr.superlink.servicer.fleet import fleet_handlers

    activate = hook(fleet_handlers, "activate_node", "says why a SuperNode's activation was refused")

    def activate_node(request: Any, state: Any) -> Any:
        try:
            return activate(request=request, state=state)
        except FlowerError as error:
            if error.code == ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED and error.public_details is None:
                registered = state.get_node_id_by_public_key(request.public_key) is not None
                explain(error, registered)
                key = "SHA256:" + hashlib.sha256(bytes(request.public_key)).hexdigest()[:16]
                audit_refusals.record("site refused", key, key=key, reason=error.public_details)
            raise

    fleet_handlers.activate_node = activate_node

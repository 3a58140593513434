"""Which site a node is: the enrolled name of the key that authenticated it, never the name a site claims.

With a federation, ``fl-server start`` registers every enrolled site's public key with the SuperLink under
the site's name from ``federation.toml`` (Flower's Control ``RegisterNode``, :mod:`fedshield.server.run_submission`),
and Flower binds the node id it returns to that key: a SuperNode activates with its key, and the SuperLink
refuses every later Fleet request whose signing key does not map to the node id it names
(``flwr/superlink/routers/fleet/node_auth.py``). The ServerApp reads those node records through Flower's
public ``Grid.get_nodes()`` (node id, public key, registered name), so a node id names its site.

The ``site`` a site reports (its node config, ``fl-client join --name``) is only a claim: a claim that
differs from the enrolled name is refused (:func:`refuse_false_claims`) and results, logs and ledgers use the
enrolled name. Without a federation (``--insecure``, simulations) no key is enrolled and the claim is all
there is; :data:`IDENTITY_KEY` in the run config says which kind of run this is, so an enrolled run whose
node has no enrolled name refuses it rather than falling back to its claim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the coordinator reads IDENTITY_KEY without importing Flower
    from flwr.serverapp import Grid

#: run config key: ``enrolled`` when sites are known by their keys (``fl-server start --dir``)
IDENTITY_KEY = "site-identity"
ENROLLED = "enrolled"


def identity_required(run_config: Mapping[str, Any]) -> bool:
    """Whether this run's sites are known by their enrolled keys (``fl-server start --dir``)."""
    return str(run_config.get(IDENTITY_KEY, "")) == ENROLLED


class EnrolledNames:
    """node id -> the name its key was enrolled under, from the SuperLink's node records (read again for a
    node id not seen yet: a site that connected later)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self._names: dict[int, str] = {}

    def refresh(self) -> None:
        self._names.update({int(node.node_id): str(node.name) for node in self.grid.get_nodes() if node.name})

    def __call__(self, node_id: int) -> str | None:
        if node_id not in self._names:
            self.refresh()
        return self._names.get(node_id)


def refuse_false_claims(replies: dict[int, dict[str, Any]], names: EnrolledNames) -> dict[int, str]:
    """Name every handshake reply by its node's enrolled name; node id -> reason for each node refused.

    A node is refused when the site it claims to be (``site`` in its reply) is not the name its key was
    enrolled under, or when its key has no enrolled name. Its reply is marked with the reason (``error``),
    so it is reported like any site that declined the run, under its enrolled name.
    """
    names.refresh()
    refused = {}
    for node_id, reply in replies.items():
        enrolled = names(node_id)
        claimed = reply.get("site")
        if enrolled is None:
            reason = (f"node {node_id} (claims site {claimed!r}) has no enrolled name on the SuperLink (a key the "
                      "coordinator did not register, or a node gone since); refused")
        elif claimed is not None and str(claimed) != enrolled:
            reason = (f"site {enrolled!r} claims to be site {claimed!r}: its key is enrolled as {enrolled!r}; refused "
                      f"(join with that kit's own name)")
        else:
            reply["site"] = enrolled
            continue
        reply["site"] = enrolled or f"node-{node_id}"
        reply["error"] = reason
        refused[node_id] = reason
    return refused

"""The one door to Flower's internals: everything FedShield changes in Flower's behaviour, and nothing else.

FedShield is built on Flower's public API (``flwr.app``, ``flwr.serverapp``, ``flwr.clientapp``,
``flwr.client``, ``flwr.server`` strategies and workflows, ``flwr.common`` records). Where that is not
enough (a security guard Flower's open-source SuperLink lacks, fixed polling sleeps, SecAgg+ defects), this
package adapts Flower's runtime, one module per process it adapts, each with an ``install()`` that the
process's ``main()`` calls: :mod:`.superlink` (installed by :mod:`.superlink_main`), :mod:`.supernode`
(:mod:`.supernode_main`), the site's warm executor, :mod:`.app_executor` (:mod:`.app_executor_main`),
and the ServerApp, :mod:`.serverapp` (the ServerApp's ``main``); SecAgg+ on both sides, :mod:`.secagg`.

Each ``install()`` runs from its process's ``main()``, never on import, and first checks that the
running Flower is :data:`FLOWER_VERSION`, the release these adaptations were written against
(:mod:`.version_check`); another Flower refuses to start with a one-line error unless
``FEDSHIELD_ALLOW_FLOWER_VERSION`` names it. A Flower attribute an adaptation needs that is gone is a
one-line error too; for the control guard that means the SuperLink does not start, never that it
starts open.
"""

from fedshield.flower_ext.version_check import ALLOW_VERSION_ENV, FLOWER_VERSION

__all__ = ["ALLOW_VERSION_ENV", "FLOWER_VERSION"]

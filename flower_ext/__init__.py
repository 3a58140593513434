"""The one door to Flower's internals: everything FedShield changes in Flower's behaviour, and Flower state it reaches.

FedShield is built on Flower's public API (``flwr.app``, ``flwr.serverapp``, ``flwr.clientapp``,
``flwr.server`` strategies and workflows, ``flwr.common`` records). Where that is not
enough (a security guard Flower's open-source SuperLink lacks, fixed polling sleeps, SecAgg+ defects), this
package adapts Flower's runtime, one module per process it adapts:

==========================  ==================================================  ===============================
module                      adapts                                              installed by
==========================  ==================================================  ===============================
:mod:`.superlink`           the SuperLink: control guard, held pulls, scoped    :mod:`.superlink_main`
                            middleware, the ServerApp's start window, why a
                            node activation failed (:mod:`.node_activation`),
                            replies lost with a restarted site
                            (:mod:`.restarted_nodes`)
:mod:`.supernode`           the SuperNode: idle pulls, executor wake-up,        :mod:`.supernode_main`
                            scoped middleware
:mod:`.app_executor`        the site's warm ClientApp executor                  :mod:`.app_executor_main`
:mod:`.superexec`           the coordinator's SuperExec: ServerApps get their   :mod:`.superexec_main`
                            task token on stdin (:mod:`.serverapp_main`)
:mod:`.serverapp`           the ServerApp: object pulls, SecAgg+                the ServerApp's ``main``
:mod:`.secagg`              SecAgg+ on both sides: ChaCha20 masks, compact      the ServerApp, the executor,
                            masked vectors                                      the ClientApp's SecAgg+ mod
:mod:`.secagg_workflow`     SecAgg+'s server workflow: each round's share       the ServerApp's fit workflow
                            count and modulus (Flower's even-count and          (checked when it is built)
                            overflow defects)
:mod:`.simulation_engine`   the simulation engine: message scan                 ``fl-sim``'s runner
:mod:`.flower_cli`          Flower's ``flwr`` CLI: the coordinator's token      :mod:`.flower_cli_main`
:mod:`.workflow_round`      reads and sets the legacy workflows' round          FedShield's workflow steps
                            counter (no change to Flower)
:mod:`.legacy_api`          names Flower's unexported compatibility helpers     imported where used (no change
                            (FitIns conversions, default workflows), 1.x        to Flower)
                            strategy types (ClientProxy, Criterion) and the
                            1.x client API (NumPyClient, central-DP mods)
:mod:`.message_types`       names two unexported Message-API types: a mod's     imported where used (no change
                            type (Mod) and error codes (ErrorCode)              to Flower)
==========================  ==================================================  ===============================

Each ``install()`` runs from its process's ``main()``, never on import, and first checks that the
running Flower is :data:`FLOWER_VERSION`, the release these adaptations were written against
(:mod:`.version_check`); another Flower refuses to start with a one-line error unless
``FEDSHIELD_ALLOW_FLOWER_VERSION`` names it. A Flower attribute an adaptation needs that is gone is a
one-line error too; for the control guard that means the SuperLink does not start, never that it
starts open.

Upgrading Flower: set :data:`FLOWER_VERSION` and the pin in ``pyproject.toml``, run the suite, and
adapt what it shows here; nothing outside this package touches Flower's internals.
"""

from fedshield.flower_ext.version_check import ALLOW_VERSION_ENV, FLOWER_VERSION

__all__ = ["ALLOW_VERSION_ENV", "FLOWER_VERSION"]

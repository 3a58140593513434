"""SecAgg+ wiring: Flower's ``SecAggPlusWorkflow`` and ``secaggplus_mod``, with three Flower defects fixed.

Protocol: Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020.
Each site quantises its update, adds a private mask and pairwise masks agreed with its neighbours
(ECDH), and secret-shares the mask seeds; the server can only remove the masks of the *sum*, and
recovers a dropped site's pairwise masks from the shares of the others.

What FedShield changes lives in the door to Flower's internals, and why is told there:

1. **Mask expansion** (:mod:`fedshield.flower_ext.secagg`). Flower expands every mask seed with
   ``numpy.random.RandomState`` seeded with 32 bits folded out of the shared secret: a server can
   enumerate 2**32 seeds and strip a site's pairwise masks. FedShield expands the full seed with ChaCha20,
   inside Flower's modules on both sides (installed by each process that runs SecAgg+ and, for ClientApps
   in processes FedShield does not start, by :func:`secaggplus_when_asked`). Masked vectors also travel
   as uint32 where every value fits, half the bytes of a SecAgg+ round's largest upload.
2. **Even share counts** and 3. **modulus overflow** (:mod:`fedshield.flower_ext.secagg_workflow`): the
   share count made odd before Flower builds its neighbour graph, and a modulus that holds the sum of
   every sampled site's quantised values.

This module holds the site's side: Flower's mod, applied only to the messages of a SecAgg+ round.
"""

from __future__ import annotations

from flwr.app import Context, Message

from fedshield.flower_ext import secagg


def secaggplus_when_asked(msg: Message, context: Context, call_next):
    """Flower's ``secaggplus_mod``, only for TRAIN messages that belong to a SecAgg+ round.

    Flower's mod assumes every TRAIN message carries SecAgg+ stage configs and fails on a plain round;
    FedShield's ClientApp serves both kinds of run. Before the first SecAgg+ message this process's
    SecAgg+ is made the server's (:func:`fedshield.flower_ext.secagg.install`), wherever the ClientApp runs.
    """
    from flwr.app import MessageType
    from flwr.client.mod import secaggplus_mod

    if msg.metadata.message_type != MessageType.TRAIN or not secagg.is_secagg_stage(msg.content.config_records):
        return call_next(msg, context)
    secagg.install()
    return secaggplus_mod(msg, context, call_next)

"""SecAgg+ inside Flower, on both sides: masks expanded with ChaCha20, masked vectors sent compactly.

Protocol: Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020.
Each site quantises its update, adds a private mask and pairwise masks agreed with its neighbours (ECDH),
and secret-shares the mask seeds; the server can only remove the masks of the *sum*, and recovers a
dropped site's pairwise masks from the shares of the others.

Flower's SecAgg+ (``secaggplus_mod`` at the sites, ``SecAggPlusWorkflow`` at the server) is used as Flower
ships it (:func:`secaggplus_when_asked` applies the mod at the sites, :mod:`.secagg_workflow` holds the
server's workflow), with two names rebound in its modules:

1. **Mask expansion.** Flower expands every mask seed with ``numpy.random.RandomState`` seeded with 32
   bits folded (XOR) out of the shared secret: a server can enumerate 2**32 seeds and strip a site's
   pairwise masks. :func:`chacha20_masks` expands the full seed with ChaCha20 (``cryptography``) keyed by
   SHA-256 of the seed instead; :func:`install_mask_prg` rebinds ``pseudo_rand_gen`` in the Flower modules
   that use it (client mod and server workflow), so both sides expand identically. This is security
   code: if Flower no longer calls the name it is rebound under, :func:`install` refuses (one line)
   rather than letting a round run on Flower's 32-bit masks.
2. **Compact masked vectors.** Flower uploads each masked vector as int64 although its values lie in
   ``[0, modulus)``, below 2**32 for federations up to 512 sites. :func:`install_compact_masked_vectors`
   sends such a vector as uint32 (half the bytes of the largest upload of a SecAgg+ round) and widens it
   back to int64 on the server before Flower sums it; the values are unchanged.

Both sides must run both (a site's masks and encoding must match the server's): the ServerApp's and the
warm executor's ``install()`` call :func:`install`, and so does the ClientApp's SecAgg+ mod before it
hands a message to Flower's, which covers ClientApps in processes FedShield does not start (Ray
actors in simulation).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from flwr.common import bytes_to_ndarray, ndarray_to_bytes

from fedshield.flower_ext.version_check import check_flower_version, hook, rebinding_point

MASK_DOMAIN = b"fedshield/secagg+/mask/v1"
UTILS = "flwr.common.secure_aggregation.secaggplus_utils"
CLIENT_MOD = "flwr.client.mod.secure_aggregation.secaggplus_mod"
SERVER_WORKFLOW = "flwr.server.workflow.secure_aggregation.secaggplus_workflow"

_installed = False  # the checks and rebindings of install() are done in this process


def chacha20_masks(seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Masks uniform in ``[0, num_range)`` for arrays of the given shapes, expanded from ``seed``.

    Drop-in for Flower's ``pseudo_rand_gen`` (same signature, int64 arrays; a 0-d shape gives a 0-d
    array). Key = SHA-256(domain ‖ seed) over the whole seed; keystream = ChaCha20 with a zero nonce
    (each key is used for exactly one expansion). ``num_range`` a power of two (Flower requires it):
    the low bits of uniform words are exactly uniform.
    """
    if num_range <= 1 or num_range & (num_range - 1):
        raise ValueError(f"mask range {num_range} must be a power of two > 1")
    digest = hashes.Hash(hashes.SHA256())
    digest.update(MASK_DOMAIN + bytes(seed))
    key = digest.finalize()
    sizes = [int(np.prod(d)) if len(d) else 1 for d in dimensions_list]
    # 32-bit words when the range fits (the usual 2**32 modulus): half the keystream of 64-bit words;
    # the low bits of uniform words are exactly uniform because the range is a power of two.
    word = np.dtype("<u4") if num_range <= 2**32 else np.dtype("<u8")
    encryptor = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
    words = np.frombuffer(encryptor.update(b"\x00" * (word.itemsize * sum(sizes))), dtype=word)
    values = np.bitwise_and(words, word.type(num_range - 1)).astype(np.int64)
    out: list[np.ndarray] = []
    offset = 0
    for dims, size in zip(dimensions_list, sizes, strict=True):
        chunk = values[offset:offset + size]
        out.append(np.array(chunk[0], dtype=np.int64) if len(dims) == 0 else chunk.reshape(dims))
        offset += size
    return out


def install_mask_prg() -> None:
    """Make Flower's SecAgg+ client mod and server workflow expand masks with :func:`chacha20_masks`."""
    # importlib, not `import a.b.c as m`: Flower's package re-exports the function ``secaggplus_mod``
    # under its module's name, so attribute access would give the function, not the module.
    utils = importlib.import_module(UTILS)
    users = [importlib.import_module(name) for name in (CLIENT_MOD, SERVER_WORKFLOW)]
    hook(utils, "pseudo_rand_gen", "expands SecAgg+ masks with ChaCha20")
    for module in users:
        rebinding_point(module, "pseudo_rand_gen", "expands SecAgg+ masks with ChaCha20")
    for module in (utils, *users):
        if module.pseudo_rand_gen is not chacha20_masks:  # keep Flower's, for tests that show its defect
            module.flower_pseudo_rand_gen = module.pseudo_rand_gen  # type: ignore[attr-defined]  # the door rebinds Flower's module attribute
        module.pseudo_rand_gen = chacha20_masks  # type: ignore[attr-defined]  # the door rebinds Flower's module attribute


def compact_vector_bytes(array: np.ndarray) -> bytes:
    """``ndarray_to_bytes`` for a masked vector: as uint32 when every value fits (lossless), else unchanged."""
    if array.dtype == np.int64 and array.size and int(array.min()) >= 0 and int(array.max()) < 2**32:
        array = array.astype(np.uint32)
    return ndarray_to_bytes(array)


def widened_vector(data: bytes) -> np.ndarray:
    """``bytes_to_ndarray`` for a received masked vector: a compact (uint32) one back as int64."""
    array = bytes_to_ndarray(data)
    return array.astype(np.int64) if array.dtype == np.uint32 else array


def install_compact_masked_vectors() -> None:
    """Make Flower's SecAgg+ client mod upload masked vectors compactly and its server workflow widen them.

    Both names are used by those two modules for the masked vectors only (Flower 1.41 and 1.42).
    """
    mod = importlib.import_module(CLIENT_MOD)
    workflow = importlib.import_module(SERVER_WORKFLOW)
    rebinding_point(mod, "ndarray_to_bytes", "uploads masked vectors compactly")
    rebinding_point(workflow, "bytes_to_ndarray", "widens compact masked vectors")
    mod.ndarray_to_bytes = compact_vector_bytes  # type: ignore[attr-defined]  # the door rebinds Flower's module attribute
    workflow.bytes_to_ndarray = widened_vector  # type: ignore[attr-defined]  # the door rebinds Flower's module attribute


def is_secagg_stage(config_records: object) -> bool:
    """Whether a message's config records hold a SecAgg+ stage (Flower's record key, from its constants
    module: read here, in the door, so no other module depends on where Flower keeps it)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    return RECORD_KEY_CONFIGS in config_records  # type: ignore[operator]  # a RecordDict's config records


def install() -> None:
    """In this process (ServerApp, ClientApp, or both in a simulation): Flower's SecAgg+ expands masks
    with ChaCha20 and encodes masked vectors compactly, as the other side does. Checked and done once."""
    global _installed
    if _installed:
        return
    check_flower_version("SecAgg+")
    install_mask_prg()
    install_compact_masked_vectors()
    _installed = True


def secaggplus_when_asked(msg: Any, context: Any, call_next: Any) -> Any:
    """Flower's ``secaggplus_mod`` as a ClientApp mod, only for TRAIN messages that belong to a SecAgg+ round.

    Flower's mod assumes every TRAIN message carries SecAgg+ stage configs and fails on a plain round;
    FedShield's ClientApp serves both kinds of run. Before the first SecAgg+ message this process's SecAgg+
    is made the server's (:func:`install`), wherever the ClientApp runs: also in a process FedShield does not
    start (a simulation's Ray actor, a SuperNode's own ClientApp process).
    """
    from flwr.app import MessageType
    from flwr.client.mod import secaggplus_mod

    if msg.metadata.message_type != MessageType.TRAIN or not is_secagg_stage(msg.content.config_records):
        return call_next(msg, context)
    install()
    return secaggplus_mod(msg, context, call_next)

"""FedShield's fixes to Flower 1.41's SecAgg+: mask expansion, share counts, modulus."""

import importlib

import numpy as np
import pytest

from fedshield.flower_ext.secagg import (
    chacha20_masks,
    compact_vector_bytes,
    install_compact_masked_vectors,
    install_mask_prg,
    widened_vector,
)
from fedshield.flower_ext.secagg_workflow import effective_shares, modulus_for


def test_masks_use_the_whole_seed_not_32_folded_bits():
    # Flower's own function, even after another test in this process installed FedShield's PRG in its place
    utils = importlib.import_module("flwr.common.secure_aggregation.secaggplus_utils")
    flower_prg = getattr(utils, "flower_pseudo_rand_gen", utils.pseudo_rand_gen)

    # Flower folds the seed into 32 bits by XOR of 4-byte words: these two seeds collide there...
    a = bytes(range(32))
    b = a[4:8] + a[0:4] + a[8:]
    shapes = [(3, 4), (), (5,)]
    flower_a, flower_b = flower_prg(a, 2**32, shapes), flower_prg(b, 2**32, shapes)
    assert all(np.array_equal(x, y) for x, y in zip(flower_a, flower_b, strict=True))
    # ...while ChaCha20 keyed by SHA-256 of the whole seed does not
    ours_a, ours_b = chacha20_masks(a, 2**32, shapes), chacha20_masks(b, 2**32, shapes)
    assert not np.array_equal(ours_a[0], ours_b[0])
    # deterministic (both sides of a pair must expand the same mask), right shapes, dtype and range
    again = chacha20_masks(a, 2**32, shapes)
    assert all(np.array_equal(x, y) for x, y in zip(ours_a, again, strict=True))
    assert [m.shape for m in ours_a] == [(3, 4), (), (5,)]
    assert all(m.dtype == np.int64 and (m >= 0).all() and (m < 2**32).all() for m in ours_a)


def test_masks_are_uniform_over_the_range():
    values = chacha20_masks(b"\x01" * 32, 2**8, [(200_000,)])[0]
    counts = np.bincount(values, minlength=256)
    expected = 200_000 / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 255 + 5 * (2 * 255) ** 0.5  # 255 degrees of freedom, 5 standard deviations


def test_install_rebinds_both_sides():
    import importlib

    install_mask_prg()
    client_mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    server_workflow = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")
    assert type(client_mod).__name__ == "module"
    assert client_mod.pseudo_rand_gen is chacha20_masks
    assert server_workflow.pseudo_rand_gen is chacha20_masks
    install_compact_masked_vectors()
    assert client_mod.ndarray_to_bytes is compact_vector_bytes
    assert server_workflow.bytes_to_ndarray is widened_vector


def test_masked_vectors_travel_as_uint32_only_where_every_value_fits():
    from flwr.common import ndarray_to_bytes

    v = np.random.default_rng(1).integers(0, 2**32, 100_000, dtype=np.int64)
    v[7] = 2**32 - 1
    compact = compact_vector_bytes(v)
    assert len(compact) < 0.51 * len(ndarray_to_bytes(v))
    back = widened_vector(compact)
    assert back.dtype == np.int64 and np.array_equal(back, v)
    for outside in (2**32, -1):  # a modulus above 2**32, or anything not masked: sent as it is
        w = v.copy()
        w[3] = outside
        assert len(compact_vector_bytes(w)) == len(ndarray_to_bytes(w))
        assert np.array_equal(widened_vector(compact_vector_bytes(w)), w)


@pytest.mark.parametrize("requested, sampled, expected", [
    (4, 10, 5),    # Flower would send 4 to the sites and use 5 itself: every site failed
    (6, 20, 7),
    (5, 20, 5),
    (0, 7, 7),     # 0: automatic, every sampled site up to 7
    (0, 20, 11),   # then 2*ceil(log2 n)+1 neighbours
    (0, 1000, 21),
    (2, 10, 3),    # at least 3
    (9, 10, 10),   # covers (almost) everyone: all-to-all
    (50, 10, 10),
])
def test_share_count_is_odd_or_everyone(requested, sampled, expected):
    shares = effective_shares(requested, sampled)
    assert shares == expected
    assert shares == sampled or shares % 2 == 1


def test_modulus_grows_with_the_federation():
    assert modulus_for(3) == 2**32
    # 2**32 / 2**22 = 1024 sites is where Flower's fixed modulus wraps
    for sites in (1_000, 1_024, 5_000, 100_000):
        m = modulus_for(sites)
        assert m >= 2 * sites * 2**22 and m & (m - 1) == 0
        assert m * (sites + 2) < 2**63


def _run_client_protocol(updates: dict[int, tuple[np.ndarray, int]], *, modulus: int, quant: int, clip: float,
                         max_weight: float):
    """Flower's own client-side SecAgg+ stages for every site (all-to-all), in process.

    Returns (what the server receives from each site, each site's private-mask seed, the plaintext
    quantised update each site would have sent without SecAgg+).
    """
    import importlib

    from flwr.app import ConfigRecord
    from flwr.client.mod.secure_aggregation import secaggplus_mod as _  # noqa: F401  (package import)
    from flwr.common import ndarrays_to_parameters
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    nids = sorted(updates)
    states = {nid: mod.SecAggPlusState(nid=nid) for nid in nids}
    setup = {Key.SAMPLE_NUMBER: len(nids), Key.SHARE_NUMBER: len(nids), Key.THRESHOLD: 2,
             Key.CLIPPING_RANGE: clip, Key.TARGET_RANGE: quant, Key.MOD_RANGE: modulus, Key.MAX_WEIGHT: max_weight}
    keys = {str(nid): list(mod._setup(states[nid], ConfigRecord(dict(setup))).values()) for nid in nids}
    inbox: dict[int, tuple[list, list]] = {nid: ([], []) for nid in nids}
    for nid in nids:
        out = mod._share_keys(states[nid], ConfigRecord({k: v for k, v in keys.items()}))
        for dst, ciphertext in zip(out[Key.DESTINATION_LIST], out[Key.CIPHERTEXT_LIST], strict=True):
            inbox[dst][0].append(nid)
            inbox[dst][1].append(ciphertext)
    received = {}
    for nid in nids:
        vector, examples = updates[nid]
        cfg = ConfigRecord({Key.SOURCE_LIST: inbox[nid][0], Key.CIPHERTEXT_LIST: inbox[nid][1]})
        res = mod._collect_masked_vectors(states[nid], cfg, examples, ndarrays_to_parameters([vector]))
        # the upload carries 4 bytes per value (uint32), not Flower's 8, and arrives as int64
        assert len(res[Key.MASKED_PARAMETERS][1]) < 4 * vector.size + 200
        received[nid] = [widened_vector(b) for b in res[Key.MASKED_PARAMETERS]]
        assert all(v.dtype == np.int64 for v in received[nid])
    return received, {nid: states[nid].rd_seed for nid in nids}


def test_server_receives_masked_updates_whose_sum_is_the_weighted_mean():
    from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_extract
    from flwr.common.secure_aggregation.quantization import dequantize

    install_mask_prg()
    install_compact_masked_vectors()
    rng = np.random.default_rng(0)
    updates = {11: (rng.normal(0, 0.5, 1000).astype(np.float32), 300),
               22: (rng.normal(0, 0.5, 1000).astype(np.float32), 500),
               33: (rng.normal(0, 0.5, 1000).astype(np.float32), 200)}
    quant, clip, max_weight = 2**22, 8.0, 500.0
    modulus = modulus_for(len(updates), quant)
    received, seeds = _run_client_protocol(updates, modulus=modulus, quant=quant, clip=clip, max_weight=max_weight)

    # what one site sends carries no usable trace of its update: masked values are uniform over the
    # modulus and uncorrelated with the plaintext
    for nid, (vector, _) in updates.items():
        masked = received[nid][1].astype(np.float64)
        assert abs(np.corrcoef(masked, vector)[0, 1]) < 0.15
        assert masked.max() > modulus / 2 > masked.min()

    # the server's unmasking (as in Flower's workflow): sum, remove each survivor's private mask, mod
    total = [sum(received[n][i] for n in received) for i in range(2)]
    for seed in seeds.values():
        total = [t - m for t, m in zip(total, chacha20_masks(seed, modulus, [t.shape for t in total]), strict=True)]
    total = [t & (modulus - 1) for t in total]
    q_total_ratio, recon = factor_extract(total)
    mean = dequantize(recon, clip, quant)[0]
    mean = (mean + -(len(updates) - 1) * clip) * (quant / q_total_ratio)
    weights = np.array([e for _, e in updates.values()], dtype=np.float64)
    weighted = sum(w * v.astype(np.float64) for w, (v, _) in zip(weights, updates.values(), strict=True))
    expected = weighted / weights.sum()
    assert np.abs(mean - expected).max() < 1e-4  # quantisation error only


def test_flower_fails_every_site_with_an_even_share_count_below_the_sample():
    """The defect effective_shares() avoids: 4 shares announced, 5 neighbours used -> the site fails."""
    import importlib

    from flwr.app import ConfigRecord
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    nids = [1, 2, 3, 4, 5]
    states = {n: mod.SecAggPlusState(nid=n) for n in nids}
    setup = {Key.SAMPLE_NUMBER: 10, Key.SHARE_NUMBER: 4, Key.THRESHOLD: 2, Key.CLIPPING_RANGE: 8.0,
             Key.TARGET_RANGE: 2**22, Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: 100.0}
    keys = {str(n): list(mod._setup(states[n], ConfigRecord(dict(setup))).values()) for n in nids}
    with pytest.raises(IndexError):
        mod._share_keys(states[1], ConfigRecord(keys))
    assert effective_shares(4, 10) == 5  # what FedShield announces instead: the count it uses

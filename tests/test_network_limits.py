"""The SuperLink's request cap is sized from the run, and a model too large for it fails before round 1."""

from __future__ import annotations

import pytest

from fedshield.common.errors import ConfigError
from fedshield.flower_ext.network_limits import (
    MIB,
    NetworkLimits,
    array_chunk_bytes,
    check_model_fits,
    default_max_message_bytes,
    largest_message_bytes,
)


def test_the_cap_is_one_flower_array_chunk_and_a_margin_whatever_the_model_without_secagg() -> None:
    assert array_chunk_bytes() == 5 * MIB  # Flower 1.42 sends every array in chunks of 5 MiB, one request each
    assert default_max_message_bytes(secagg=False) == 8 * MIB
    assert largest_message_bytes(50_000_000, 1, secagg=False) == 8 * MIB  # a 200 MB model: still 5 MiB chunks
    check_model_fits(50_000_000, 1, secagg=False, max_message_bytes=8 * MIB)


def test_under_secagg_a_masked_update_travels_whole_and_a_model_too_large_is_refused_naming_the_size() -> None:
    assert default_max_message_bytes(secagg=True) == 64 * MIB
    check_model_fits(454_922, 1, secagg=True, max_message_bytes=64 * MIB)  # digits-cnn: 3.5 MiB as int64
    with pytest.raises(ConfigError) as refused:
        check_model_fits(10_000_000, 1, secagg=True, max_message_bytes=64 * MIB)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("--max-message-mb 64:")
    needed = int(message.rsplit("--max-message-mb ", 1)[1].split()[0])
    check_model_fits(10_000_000, 1, secagg=True, max_message_bytes=needed * MIB)  # the size it names fits


def test_the_superlink_process_reads_its_limits_back_and_has_them_without_fl_server() -> None:
    limits = NetworkLimits(12 * MIB, 2.5)
    assert NetworkLimits.from_env(limits.to_env()) == limits
    assert NetworkLimits.from_env({}) == NetworkLimits(8 * MIB, 20.0)  # never unbounded
    assert limits.keep_alive_s == 2.5 and NetworkLimits(MIB, 60.0).keep_alive_s == 5.0
    with pytest.raises(ConfigError, match="--idle-timeout"):
        NetworkLimits(MIB, 0.0).checked()


def test_a_peers_share_is_its_ipv4_address_or_its_ipv6_network() -> None:
    """An IPv6 host holds a whole /64 (test_e2e_network_limits floods from seven of its addresses); an
    IPv4-mapped address is the IPv4 peer it stands for, and a link-local zone does not make a new peer."""
    from fedshield.flower_ext.connection_limits import peer_share

    assert peer_share("203.0.113.7") == "203.0.113.7" != peer_share("203.0.113.8")
    assert peer_share("2001:db8:1:2::7") == peer_share("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert peer_share("2001:db8:1:3::7") != peer_share("2001:db8:1:2::7")
    assert peer_share("::ffff:203.0.113.7") == "203.0.113.7"
    assert peer_share("fe80::1%eth0") == peer_share("fe80::2%eth1") == "fe80::/64"


def test_a_message_taken_before_a_nodes_latest_activation_is_lost_with_its_site() -> None:
    """A site killed after taking a message and started again activates the same node: that message's reply
    cannot come (the coordinator waited for it for ever when it missed the seconds the node was offline)."""
    from types import SimpleNamespace

    from fedshield.flower_ext.restarted_nodes import lost_in_restart

    def message(delivered: str) -> SimpleNamespace:
        return SimpleNamespace(metadata=SimpleNamespace(delivered_at=delivered))

    node = SimpleNamespace(last_activated_at="2026-12-07T06:11:32.636000+00:00")
    assert lost_in_restart(message("2026-12-07T06:10:48.100000+00:00"), node)  # taken, then the site restarted
    assert not lost_in_restart(message("2026-12-07T06:11:40.000000+00:00"), node)  # taken by the site now up
    assert not lost_in_restart(message(""), node)  # never taken: Flower answers it (or the site takes it)
    assert not lost_in_restart(message("2026-12-07T06:10:48.100000+00:00"), SimpleNamespace(last_activated_at=""))

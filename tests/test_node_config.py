"""The site's node config: one schema for `fl-client join` (writer) and the ClientApp (reader)."""

from __future__ import annotations

import pytest
from flwr.common.config import parse_config_args

from fedshield.client.node_config import SiteNodeConfig
from fedshield.client.supernode import node_config_arg
from fedshield.common.errors import ConfigError


def test_what_join_writes_is_what_the_clientapp_reads_through_flowers_own_parser() -> None:
    written = SiteNodeConfig(data_path="/data/a b", site_name='h "a"', task="tabular", state_dir="/data/a b/.fedshield",
                             events_file="/tmp/e.jsonl", dp=True, epsilon=3.5, delta=1e-6, max_grad_norm=0.5,
                             accountant="prv", site_metrics="exact", allow_repeats=True, metrics_cost=0.2,
                             device="cpu", allowed_tasks="digits-mlp,x")
    parsed = parse_config_args([node_config_arg(written.to_flower())])  # as the SuperNode hands it on
    assert SiteNodeConfig.from_flower(parsed) == written
    assert written.allowed_task_names == {"digits-mlp", "x"}
    both = SiteNodeConfig(data_path="/d", site_name="it's \"a\"", task="t", state_dir="/s")
    with pytest.raises(ConfigError, match="site-name"):
        node_config_arg(both.to_flower())


def test_defaults_a_virtual_site_and_a_wrong_type() -> None:
    minimal = SiteNodeConfig.from_flower({"data-path": "/data/hospital_a"})
    assert minimal is not None
    assert (minimal.site_name, minimal.state_dir) == ("hospital_a", "/data/hospital_a/.fedshield")
    assert minimal.dp and minimal.site_metrics == "dp" and not minimal.allow_repeats  # private unless the site says
    assert SiteNodeConfig.from_flower({"partition-id": 3, "num-partitions": 10}) is None
    with pytest.raises(ConfigError, match="epsilon"):
        SiteNodeConfig.from_flower({"data-path": "/d", "epsilon": "lots"})

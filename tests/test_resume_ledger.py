"""A resumed run is a new Flower run that carries its original FedShield run id; the site's ledger continues
that run (its plan and its entries) and a coordinator that claims a run id cannot have a released round again.

The site's own ClientApp (SiteClient) answers the training messages a coordinator would send: the original run,
the run resumed by a new SuperLink (another Flower run id), and a curious coordinator replaying a round.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedshield.client.client_app import SiteClient
from fedshield.client.node_config import SiteNodeConfig
from fedshield.client.privacy_ledger import PrivacyLedger, ReplayRefusedError
from fedshield.client.site_check import check_site
from fedshield.common.run_config import RunConfig
from fedshield.common.torch_arrays import model_to_ndarrays
from fedshield.simulations.split import write_sites

ORIGINAL = "17594785846114196940"


@pytest.fixture
def site(tmp_path: Path) -> tuple[SiteNodeConfig, dict]:
    (folder,) = write_sites("breast-cancer", 1, tmp_path / "data", dirichlet=None, seed=0)
    node = SiteNodeConfig(data_path=str(folder), site_name="hospital_a", task="tabular",
                          state_dir=str(tmp_path / "st"), epsilon=8.0)
    _, _, data = check_site(folder, task="tabular", overrides={}, private=True)
    return node, data.schema.to_config()


def _fit(site: tuple[SiteNodeConfig, dict], *, flower_run: int, rnd: int, run_id: str) -> None:
    """One training message of round ``rnd``, as Flower run ``flower_run`` delivers it with ``run_id`` in its
    config."""
    node, schema = site
    context = Context(run_id=flower_run, node_id=1, node_config=node.to_flower(), state=RecordDict(), run_config={})
    config = {**replace(RunConfig(task="tabular", rounds=4), fedshield_run_id=run_id).to_flower(), **schema,
              "round": rnd}
    client = SiteClient(context)
    *_, model = client._prepare(config)
    client.fit(model_to_ndarrays(model), config)


def _ledger(node: SiteNodeConfig) -> PrivacyLedger:
    return PrivacyLedger.open(Path(node.state_dir), epsilon_budget=None, delta=None, accountant=None,
                              data_dir=Path(node.data_path))


def test_a_resumed_run_continues_the_original_runs_ledger_and_plan(site) -> None:
    _fit(site, flower_run=int(ORIGINAL), rnd=1, run_id=ORIGINAL)
    _fit(site, flower_run=int(ORIGINAL), rnd=2, run_id=ORIGINAL)
    planned = _ledger(site[0]).plans[ORIGINAL]
    # the coordinator crashed; its resumed run is Flower run 99 and names the original run
    _fit(site, flower_run=99, rnd=3, run_id=ORIGINAL)
    _fit(site, flower_run=99, rnd=4, run_id=ORIGINAL)
    ledger = _ledger(site[0])
    assert [(e.run_id, e.round) for e in ledger.entries if e.kind == "train"] == [(ORIGINAL, r) for r in (1, 2, 3, 4)]
    assert list(ledger.plans) == [ORIGINAL]  # one run: its plan continued, the budget not planned afresh
    assert ledger.plans[ORIGINAL].noise_multiplier == planned.noise_multiplier


def test_a_coordinator_claiming_a_run_id_cannot_have_a_released_round_again(site) -> None:
    _fit(site, flower_run=int(ORIGINAL), rnd=1, run_id=ORIGINAL)
    _fit(site, flower_run=int(ORIGINAL), rnd=2, run_id=ORIGINAL)
    spent = _ledger(site[0]).epsilon_spent()
    for flower_run in (int(ORIGINAL), 99, 1234):  # the same run, a resumed one, any other Flower run
        with pytest.raises(ReplayRefusedError, match=f"run {ORIGINAL} round 2 .train. was already released"):
            _fit(site, flower_run=flower_run, rnd=2, run_id=ORIGINAL)
    assert _ledger(site[0]).epsilon_spent() == spent


def test_without_a_fedshield_run_id_the_flower_run_id_keys_the_ledger(site) -> None:
    _fit(site, flower_run=7, rnd=1, run_id="")  # a coordinator of an older FedShield sends none
    assert [e.run_id for e in _ledger(site[0]).entries if e.kind == "train"] == ["7"]

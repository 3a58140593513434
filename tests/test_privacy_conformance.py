"""Privacy conformance: a site's ε covers everything that leaves it, whatever the coordinator asks.

Each test performs what a curious or misconfigured coordinator (or a second federation on the same
data) did to the site before the ledger held every release: replaying a round, changing the batch
size mid-run, running two processes on one ledger, reading the exact statistics in replies, and
relying on preprocessing or a hold-out split that one record shifts for all the others.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch.utils.data import TensorDataset

from fedshield.client.local_evaluation import evaluate_round
from fedshield.client.local_training import PrivacySettings, train_round
from fedshield.client.privacy_ledger import PrivacyLedger, ReplayRefusedError
from fedshield.client.site_session import identify_site, privacy_settings
from fedshield.common.errors import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.simulations.datasets import load_dataset
from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
from fedshield.tasks.holdout import holdout_indices
from fedshield.tasks.registry import get_task

CPU = torch.device("cpu")
DIGITS = get_task("digits-cnn")
TABULAR = get_task("tabular")


def _digits(n_train: int = 200, n_val: int = 100) -> SiteData:
    d = load_dataset("digits")
    x = torch.as_tensor(d.x[: n_train + n_val], dtype=torch.float32).unsqueeze(1) / 255
    y = torch.as_tensor(d.y[: n_train + n_val])
    schema = DataSchema("classification", (1, 28, 28), 10)
    return SiteData(TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:]), schema, Path("."))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return DIGITS.build_model(DataSchema("classification", (1, 28, 28), 10), TaskOptions(model="gabor"))


def _accountant_eps(ledger: PrivacyLedger) -> float:
    """ε by Opacus' RDP accountant stepped through every release the ledger holds, one by one."""
    acc = RDPAccountant()
    for sigma, q, steps in ledger.history():
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(ledger.delta)


def _ledger(state: Path) -> PrivacyLedger:
    return PrivacyLedger.open(state, epsilon_budget=None, delta=None, accountant=None)


def _train(site: SiteData, cfg: RunConfig, privacy: PrivacySettings, rnd: int, run_id: str = "run-1"):
    return train_round(DIGITS, site, _model(), cfg, run_id=run_id, rnd=rnd, privacy=privacy, device=CPU)


# ------------------------------------------------------------------ finding 1: a repeated round
def test_a_replayed_round_is_refused_and_counted_only_where_the_site_allows_it(tmp_path: Path) -> None:
    site, cfg = _digits(), RunConfig(rounds=3, batch_size=32, lr=0.5)
    privacy = PrivacySettings(True, 8.0, 0.0, 1.0, tmp_path / "strict")
    _train(site, cfg, privacy, 1)
    before = _ledger(privacy.state_dir)
    with pytest.raises(ReplayRefusedError, match="round 1 .train. was already released"):
        _train(site, cfg, privacy, 1)  # the coordinator sends round 1 again: fresh noise on the same data
    after = _ledger(privacy.state_dir)
    assert after.history() == before.history() and after.epsilon_spent() == before.epsilon_spent()
    with pytest.raises(ReplayRefusedError, match="evaluate"):  # an evaluation, too, is released once
        for _ in range(2):
            evaluate_round(DIGITS, site, _model(), cfg, run_id="run-1", rnd=1, privacy=privacy, device=CPU)

    allowing = PrivacySettings(True, 8.0, 0.0, 1.0, tmp_path / "allowing", allow_repeats=True)
    _train(site, cfg, allowing, 1)
    once = _ledger(allowing.state_dir).epsilon_spent()
    _train(site, cfg, allowing, 1)
    twice = _ledger(allowing.state_dir)
    train = [e for e in twice.entries if e.kind == "train"]
    assert [(e.round, e.release) for e in train] == [(1, 1), (1, 2)]
    assert twice.epsilon_spent() > once and twice.epsilon_spent() == pytest.approx(_accountant_eps(twice), rel=1e-6)


def test_a_round_whose_process_died_before_its_update_left_may_be_retried(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    site, cfg = _digits(), RunConfig(rounds=3, batch_size=32, lr=0.5)
    privacy = PrivacySettings(True, 8.0, 0.0, 1.0, tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies mid-round: nothing was sent

    monkeypatch.setattr(DIGITS, "train", crash)
    with pytest.raises(KeyboardInterrupt):
        _train(site, cfg, privacy, 1)
    monkeypatch.undo()
    pending = [e for e in _ledger(tmp_path).entries if e.kind == "train"]
    assert [e.status for e in pending] == ["pending"]  # counted while nobody knows whether it left
    _train(site, cfg, privacy, 1)  # the retry replaces it: counted once, not twice
    assert [(e.round, e.status) for e in _ledger(tmp_path).entries if e.kind == "train"] == [(1, "released")]


# ------------------------------------------------------------------ finding 2 and 6: what ran is recorded
def test_a_batch_size_changed_mid_run_is_recorded_as_it_ran_and_re_planned(tmp_path: Path) -> None:
    site = _digits(300)
    privacy = PrivacySettings(True, 8.0, 0.0, 1.0, tmp_path)
    _train(site, RunConfig(rounds=3, batch_size=16, lr=0.5), privacy, 1)
    _train(site, RunConfig(rounds=3, batch_size=100, lr=0.5), privacy, 2)  # the coordinator changes the batch size
    ledger = _ledger(tmp_path)
    released = ledger.counts[0].released_train
    first, second = [e for e in ledger.entries if e.kind == "train"]
    assert first.sample_rate == pytest.approx(1 / -(-released // 16))
    assert second.sample_rate == pytest.approx(1 / -(-released // 100))  # the q that ran, not the planned one
    assert second.steps == int(1 / second.sample_rate)  # the steps Opacus' sampler takes: int(1/q)
    assert ledger.plans["run-1"].sample_rate == second.sample_rate  # re-planned against the history
    assert ledger.epsilon_spent() == pytest.approx(_accountant_eps(ledger), rel=1e-6)
    assert ledger.epsilon_spent() <= 8.0 + 1e-6
    _train(site, RunConfig(rounds=3, batch_size=100, lr=0.5), privacy, 3)  # the plan still fits the budget
    assert _ledger(tmp_path).epsilon_spent() <= 8.0 + 1e-6


# ------------------------------------------------------------------ finding 3: two processes, one ledger
TWO_FEDERATIONS = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from torch.utils.data import TensorDataset
    from fedshield.client.local_training import PrivacySettings, train_round
    from fedshield.common.run_config import RunConfig
    from fedshield.simulations.datasets import load_dataset
    from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
    from fedshield.tasks.registry import get_task
    torch.set_num_threads(1)
    d = load_dataset("digits")
    x = torch.as_tensor(d.x[:300], dtype=torch.float32).unsqueeze(1) / 255
    y = torch.as_tensor(d.y[:300])
    site = SiteData(TensorDataset(x[:250], y[:250]), TensorDataset(x[250:], y[250:]),
                    DataSchema("classification", (1, 28, 28), 10), Path("."))
    task = get_task("digits-cnn")
    cfg = RunConfig(rounds=4, local_epochs=2, batch_size=16, lr=0.5)
    privacy = PrivacySettings(True, 6.0, 0.0, 1.0, Path(sys.argv[1]))
    for rnd in range(1, 5):
        model = task.build_model(site.schema, TaskOptions(model="full"))
        train_round(task, site, model, cfg, run_id=sys.argv[2], rnd=rnd, privacy=privacy, device=torch.device("cpu"))
    print("done", flush=True)
""")


def test_two_federations_on_one_data_folder_compose_every_round(tmp_path: Path) -> None:
    """Two `fl-client join` on the same data, two runs at once: every round of both is in the ledger, the
    second run planned against the first's reservation, and the total stays within the budget (before the
    lock, 7 of 18 rounds were lost and ε was under-reported)."""
    state = tmp_path / "state"
    procs = [subprocess.Popen([sys.executable, "-c", TWO_FEDERATIONS, str(state), run], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for run in ("run-a", "run-b")]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0 and "done" in out, err[-2000:]
    ledger = _ledger(state)
    train = sorted((e.run_id, e.round, e.status) for e in ledger.entries if e.kind == "train")
    assert train == [(run, rnd, "released") for run in ("run-a", "run-b") for rnd in range(1, 5)]
    assert [e.kind for e in ledger.entries].count("count") == 1  # one release of the counts, shared
    sigmas = sorted(plan.noise_multiplier for plan in ledger.plans.values())
    assert sigmas[1] > sigmas[0] * 1.1  # whichever planned second left room for the other's remaining rounds
    assert ledger.epsilon_spent() == pytest.approx(_accountant_eps(ledger), rel=1e-6)
    assert ledger.epsilon_spent() <= 6.0 + 1e-6


# ------------------------------------------------------------------ finding 4: statistics in replies
def test_evaluation_replies_carry_noise_of_the_scale_the_ledger_accounts(tmp_path: Path) -> None:
    """Repeated evaluations of one model (the site allows repeats, each counted): the released accuracy
    scatters with the standard deviation the ledger's statistics noise implies: each of the k = 3 sums
    (count, loss, correct) gets N(0, σ_m²·3), so accuracy = correct/count has sd ≈ σ_m·√3·√(1 + a²) / n."""
    site, cfg = _digits(200, 150), RunConfig(rounds=100, batch_size=32, lr=0.5)  # plans 101 evaluations
    privacy = PrivacySettings(True, 300.0, 0.0, 1.0, tmp_path, allow_repeats=True)
    model = _model()
    exact = DIGITS.evaluate(model, site.val, device=CPU)
    released = [evaluate_round(DIGITS, site, model, cfg, run_id="r", rnd=1, privacy=privacy, device=CPU)
                for _ in range(80)]
    ledger = _ledger(tmp_path)
    entries = [e for e in ledger.entries if e.kind == "evaluate"]
    assert len(entries) == 80 and len({e.statistics_noise for e in entries}) == 1
    sigma_m, n_val = entries[0].statistics_noise, ledger.counts[0].released_val
    assert all(r.statistics == "dp" and r.count == n_val for r in released)  # FedAvg weighs by the released count
    accuracy = np.array([r.metrics["accuracy"] for r in released])
    a = exact["accuracy"]
    expected_sd = sigma_m * np.sqrt(3) * np.sqrt(1 + a * a) / 150  # a ratio of two noisy sums (delta method)
    assert accuracy.min() > 0 and accuracy.max() < 1  # inside the clamp: the spread is the noise alone
    assert accuracy.std(ddof=1) == pytest.approx(expected_sd, rel=0.3)
    assert abs(accuracy.mean() - a) < 4 * expected_sd / np.sqrt(80)  # unbiased: not scaled by the released count
    assert set(released[0].metrics) == {"accuracy"}  # precision, recall, F1, ROC-AUC are not per-record sums
    assert ledger.epsilon_spent() == pytest.approx(_accountant_eps(ledger), rel=1e-6)


def test_training_replies_release_the_loss_and_count_and_exact_metrics_are_an_explicit_opt_out(tmp_path: Path) -> None:
    site, cfg = _digits(), RunConfig(rounds=2, batch_size=32, lr=0.5)
    private = _train(site, cfg, PrivacySettings(True, 8.0, 0.0, 1.0, tmp_path / "dp"), 1)
    ledger = _ledger(tmp_path / "dp")
    (entry,) = [e for e in ledger.entries if e.kind == "train"]
    assert entry.statistics_noise > 0 and not entry.exact_statistics
    assert private.statistics == "dp" and private.count == ledger.counts[0].released_train
    assert private.loss is not None and private.loss != private.result.loss
    exact = _train(site, cfg, PrivacySettings(True, 8.0, 0.0, 1.0, tmp_path / "exact", site_metrics="exact"), 1)
    (entry,) = [e for e in _ledger(tmp_path / "exact").entries if e.kind == "train"]
    assert entry.exact_statistics and entry.statistics_noise == 0 and _ledger(tmp_path / "exact").exact_releases() == 1
    assert exact.statistics == "exact" and exact.count == 200 and exact.loss == exact.result.loss


def test_the_coordinator_cannot_switch_a_real_sites_metrics_to_exact(tmp_path: Path) -> None:
    proposal = RunConfig(site_metrics="exact", epsilon=100.0, dp=False, sim_data_dir=str(tmp_path))
    real = identify_site({"data-path": str(tmp_path), "epsilon": 3.0}, proposal)
    assert (privacy_settings(real, proposal).site_metrics, privacy_settings(real, proposal).epsilon) == ("dp", 3.0)
    assert privacy_settings(real, proposal).enabled  # nor switch its DP off
    virtual = identify_site({"partition-id": 1, "num-partitions": 4}, proposal)
    assert privacy_settings(virtual, proposal).site_metrics == "exact"  # the experimenter's own virtual sites


# ------------------------------------------------------------------ finding 5: preprocessing and the split
def _breast_cancer_folder(folder: Path, rows: int, extra_row: list[float] | None = None, *,
                          ranges: bool = True) -> Path:
    data = load_dataset("breast-cancer")
    folder.mkdir(parents=True)
    with open(folder / "data.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*data.feature_names, "diagnosis"])
        for x, y in zip(data.x[:rows], data.y[:rows], strict=True):
            writer.writerow([*(f"{v:.6g}" for v in x), int(y)])
        if extra_row is not None:
            writer.writerow([*(f"{v:.6g}" for v in extra_row), 1])
    import tomli_w

    config = {k: v for k, v in data.site_config.items() if ranges or k != "feature_ranges"}
    (folder / "fedshield.toml").write_text(tomli_w.dumps({"task": "tabular", **config}))
    return folder


def _clipped_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """(N, P) per-example gradients of the loss, each clipped to L2 norm ``clip`` (float64 reference)."""
    rows = []
    for xi, yi in zip(x, y, strict=True):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(xi[None].double()), yi[None]).backward()
        g = torch.cat([p.grad.flatten() for p in model.parameters()])
        rows.append(g * min(1.0, clip / float(g.norm())))
    return torch.stack(rows)


def test_one_added_record_leaves_every_other_records_clipped_gradient_and_split_unchanged(tmp_path: Path) -> None:
    outlier = list(load_dataset("breast-cancer").x.max(axis=0) * 3)  # far outside every declared range
    base = _breast_cancer_folder(tmp_path / "d", 200)
    plus = _breast_cancer_folder(tmp_path / "d1", 200, outlier)
    from fedshield.tasks.site_config import site_options

    loaded = []
    for folder in (base, plus):
        _, opts = site_options(folder, {})
        opts.private = True
        loaded.append(TABULAR.load_site(folder, opts))
    a, b = loaded
    # the hold-out split: every record of D is on the same side in D + 1
    rows_a = {tuple(r.tolist()) for r in a.train.tensors[0]}
    rows_b = {tuple(r.tolist()) for r in b.train.tensors[0]}
    val_b = {tuple(r.tolist()) for r in b.val.tensors[0]}
    assert rows_a <= rows_b and not rows_a & val_b and len(rows_b | val_b) == 201
    # the features of the common records are identical, so is each clipped gradient at the same model
    torch.manual_seed(0)
    model = TABULAR.build_model(a.schema, TaskOptions(model="mlp")).double()
    index_b = {tuple(r.tolist()): i for i, r in enumerate(b.train.tensors[0])}
    order = [index_b[tuple(r.tolist())] for r in a.train.tensors[0]]
    ga = _clipped_gradients(model, a.train.tensors[0], a.train.tensors[1])
    gb = _clipped_gradients(model, b.train.tensors[0][order], b.train.tensors[1][order])
    assert float((ga - gb).norm(dim=1).max()) == 0.0


def test_under_dp_tabular_refuses_statistics_of_its_own_data_as_preprocessing(tmp_path: Path) -> None:
    folder = _breast_cancer_folder(tmp_path / "d", 60, ranges=False)
    from fedshield.tasks.site_config import site_options

    _, options = site_options(folder, {})
    options.private = True
    with pytest.raises(ConfigError, match="feature_ranges") as err:
        TABULAR.load_site(folder, options)
    assert "\n" not in str(err.value)
    options.private = False  # --no-dp: nothing is promised, per-site standardisation is allowed
    assert len(TABULAR.load_site(folder, options).train) > 0
    (folder / "fedshield.toml").write_text('task = "tabular"\ntarget = "diagnosis"\n')
    _, options = site_options(folder, {})
    options.private = True
    with pytest.raises(ConfigError, match="kind"):
        TABULAR.load_site(folder, options)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_hold_out_split_of_every_task_is_stable_under_insertion(seed: int) -> None:
    d = load_dataset("digits")
    x, y = d.x[:400], d.y[:400]
    train, val = holdout_indices(x, y, val_fraction=0.2, seed=seed, where="t")
    for extra in (0, 57, 399):  # one more record, appended, prepended or in the middle
        x1 = np.insert(x, extra, d.x[500], axis=0)
        y1 = np.insert(y, extra, d.y[500])
        train1, val1 = holdout_indices(x1, y1, val_fraction=0.2, seed=seed, where="t")
        def back(idx: np.ndarray, extra: int = extra) -> set[int]:  # the indices the old records had
            return {int(i) - (1 if i > extra else 0) for i in idx if i != extra}

        assert back(train1) == set(train.tolist()) and back(val1) == set(val.tolist())
    texts = [f"review {i}" for i in range(50)]
    t_train, _ = holdout_indices(texts, val_fraction=0.2, seed=seed, where="t")
    t_train1, _ = holdout_indices(texts + ["a much longer review than any other in the folder"], val_fraction=0.2,
                                  seed=seed, where="t")
    assert set(t_train.tolist()) == {int(i) for i in t_train1 if i < 50}  # padding of a longer text moves nothing


def test_the_lock_of_a_killed_process_does_not_block_the_site(tmp_path: Path) -> None:
    """kill -9 while holding the ledger lock (mid-round): the next process gets it at once."""
    import os
    import signal

    from fedshield.client.ledger_lock import LOCK_FILE, ledger_lock

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from fedshield.client.ledger_lock import ledger_lock
        with ledger_lock(Path({str(tmp_path)!r})):
            print("held", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(holder.pid)
    with pytest.raises(ConfigError, match=f"process {holder.pid} held this site's privacy ledger"), \
            ledger_lock(tmp_path, wait_s=0.3):
        pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with ledger_lock(tmp_path, wait_s=5):  # raises if the dead holder still blocked it after 5 s
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_a_coordinators_no_dp_is_a_proposal_the_site_answers_with_a_notice(tmp_path: Path) -> None:
    """The run config says dp = false; the site joined with DP: it keeps DP and says so in its own output."""
    import json

    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedshield.client.client_app import QUERY_RECORD, fedshield_query_mod
    from fedshield.client.node_config import SiteNodeConfig
    from fedshield.simulations.split import write_sites

    (site,) = write_sites("breast-cancer", 1, tmp_path / "data", dirichlet=None, seed=0)
    events = tmp_path / "events.jsonl"
    node = SiteNodeConfig(data_path=str(site), site_name="hospital_a", task="tabular", state_dir=str(tmp_path / "st"),
                          events_file=str(events), epsilon=8.0)
    proposal = RunConfig(task="tabular", dp=False).to_flower()
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 1
    try:
        msg = Message(RecordDict({QUERY_RECORD: ConfigRecord({**proposal, "action": "describe"})}), dst_node_id=1,
                      message_type=MessageType.QUERY)
        context = Context(run_id=7, node_id=1, node_config=node.to_flower(), state=RecordDict(), run_config=proposal)
        reply = fedshield_query_mod(msg, context, lambda m, c: None)
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    answer = dict(reply.content.config_records[QUERY_RECORD])
    assert "error" not in answer, answer
    notices = [json.loads(line) for line in events.read_text().splitlines() if '"notice"' in line]
    assert notices and "keeps DP-SGD" in notices[0]["message"]
    # and it answered with its released counts, never the exact ones (which only its ledger holds)
    (counts,) = _ledger(tmp_path / "st").counts
    assert (answer["examples-train"], answer["examples-val"]) == (counts.released_train, counts.released_val)

// The FedShield dashboard page: polls /api/state and redraws, without reloading the page.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let pollMs = 1000, lastOk = 0, lastText = "";

  function cell(row, value, cls) {
    const td = document.createElement("td");
    if (value instanceof Node) td.appendChild(value); else td.textContent = value == null ? "" : String(value);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function badge(label, prefix) {
    const span = document.createElement("span");
    span.className = "badge " + prefix + "-" + label;
    span.textContent = label;
    return span;
  }

  function epsilonCell(site) {
    const box = document.createElement("div");
    box.className = "eps";
    const label = document.createElement("span");
    label.className = "eps-text";
    label.id = "eps-" + site.name;
    if (site.dp === false) { label.textContent = "no DP (site's choice)"; box.appendChild(label); return box; }
    const spent = site.epsilon == null ? "–" : site.epsilon.toFixed(2);
    const budget = site.budget == null ? "?" : String(+site.budget.toFixed(2));
    label.textContent = "ε " + spent + " / " + budget;
    if (site.budget) {
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("div");
      const share = Math.min(1, (site.epsilon || 0) / site.budget);
      fill.className = "fill" + (share >= 1 ? " over" : share >= 0.8 ? " high" : "");
      fill.style.width = (share * 100).toFixed(1) + "%";
      bar.appendChild(fill);
      box.appendChild(bar);
    }
    box.appendChild(label);
    return box;
  }

  function renderSites(state) {
    const body = $("sites").querySelector("tbody");
    body.replaceChildren();
    for (const site of state.sites) {
      const row = document.createElement("tr");
      row.dataset.site = site.name;
      row.dataset.state = site.state;
      cell(row, site.name, "site-name");
      cell(row, badge(site.state, "state"));
      cell(row, epsilonCell(site));
      cell(row, site.examples_train == null ? "" : site.examples_train + " / " + site.examples_val);
      cell(row, site.last_round == null ? "" : site.last_round);
      cell(row, site.reason || "", site.reason ? "error" : "");
      body.appendChild(row);
    }
    const shown = state.sites.length, total = state.sites_total;
    $("sites-count").textContent = total > shown ? "(first " + shown + " of " + total + ")" : "(" + total + ")";
  }

  function renderRun(state) {
    const run = state.run;
    const status = $("status");
    status.textContent = run.status;
    status.className = "badge status-" + run.status;
    const total = run.rounds_total == null ? "–" : run.rounds_total;
    const done = run.round == null ? 0 : run.round;
    $("round-counter").textContent = "round " + done + " / " + total;
    $("round-counter").dataset.round = String(done);
    $("progress-bar").style.width = (run.rounds_total ? Math.min(100, done / run.rounds_total * 100) : 0) + "%";
    const flight = run.in_flight;
    let note = "";
    if (flight) note = (flight.stage === "train" ? "training" : "evaluating") + " round " + flight.round + " on "
      + flight.sites.length + " site(s)";
    else if (run.status === "waiting-for-sites") note = "sites connected: " + (run.connected || 0) + " of "
      + (run.min_clients || "?") + " needed";
    $("in-flight").textContent = note;
    $("run-title").textContent = [run.task, run.mode, run.secagg ? "SecAgg+" : "", run.dp ? "DP-SGD at the sites" : "no DP"]
      .filter(Boolean).join(" · ");
    const err = $("run-error");
    err.hidden = !run.error;
    err.textContent = run.error || "";
  }

  function renderCharts(state) {
    const head = state.run.headline, rounds = state.rounds;
    $("global-title").textContent = "Global " + head + " per round";
    $("sites-title").textContent = "Per-site " + head + " per round";
    const global = [{ name: "federated " + head, points: rounds.filter((r) => r.metrics[head] != null)
      .map((r) => [r.round, r.metrics[head]]) }];
    const central = rounds.filter((r) => r.centralized[head] != null).map((r) => [r.round, r.centralized[head]]);
    if (central.length) global.push({ name: "central test " + head, points: central });
    const bounded = head === "accuracy" || head === "r2";
    FedCharts.lineChart($("chart-global"), global, bounded ? { yMin: 0, yMax: 1 } : {});
    const names = [...new Set(rounds.flatMap((r) => Object.keys(r.sites)))].sort();
    FedCharts.lineChart($("chart-sites"), names.slice(0, 10).map((name) => ({ name: name,
      points: rounds.filter((r) => r.sites[name] && r.sites[name][head] != null).map((r) => [r.round, r.sites[name][head]]) })),
      bounded ? { yMin: 0, yMax: 1 } : {});
    const loss = [{ name: "validation loss", points: rounds.filter((r) => r.metrics.loss != null).map((r) => [r.round, r.metrics.loss]) },
      { name: "train loss", points: rounds.filter((r) => r.train_loss != null).map((r) => [r.round, r.train_loss]) }];
    FedCharts.lineChart($("chart-loss"), loss.filter((s) => s.points.length), { yMin: 0 });
    FedCharts.barChart($("chart-time"), rounds.filter((r) => r.seconds != null)
      .map((r) => ({ x: r.round, parts: [{ name: "round", value: r.seconds }] })), ["round"]);
    const stages = [...new Set(rounds.flatMap((r) => Object.keys(r.secagg_stages_s || {})))];
    $("secagg-panel").hidden = !state.run.secagg;
    FedCharts.barChart($("chart-secagg"), rounds.filter((r) => Object.keys(r.secagg_stages_s || {}).length)
      .map((r) => ({ x: r.round, parts: stages.filter((s) => r.secagg_stages_s[s] != null)
        .map((s) => ({ name: s, value: r.secagg_stages_s[s] })) })), stages);
  }

  function renderFailures(state) {
    const list = $("failures");
    list.replaceChildren();
    const items = state.failures.slice(-100).reverse();
    if (!items.length) { const li = document.createElement("li"); li.className = "muted"; li.textContent = "none"; list.appendChild(li); }
    for (const f of items) {
      const li = document.createElement("li");
      li.textContent = "round " + f.round + " (" + f.stage + "): " + f.site + ": " + f.reason;
      list.appendChild(li);
    }
  }

  async function poll() {
    try {
      const response = await fetch("/api/state", { cache: "no-store", credentials: "same-origin" });
      if (response.status === 401) { window.location.assign("/login"); return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const text = await response.text();
      if (text !== lastText) {  // the state is a pure function of the run: same text, same page (and no redraw
        const state = JSON.parse(text);  // that would undo a reader's text selection every second)
        pollMs = (state.poll_seconds || 1) * 1000;
        renderRun(state);
        renderSites(state);
        renderCharts(state);
        renderFailures(state);
        lastText = text;
      }
      lastOk = Date.now();
      $("connection").textContent = "live · updated " + new Date(lastOk).toLocaleTimeString();
    } catch (err) {
      $("connection").textContent = "not reachable (" + err.message + "); last update "
        + (lastOk ? new Date(lastOk).toLocaleTimeString() : "never");
    } finally {
      setTimeout(poll, pollMs);
    }
  }

  poll();
})();

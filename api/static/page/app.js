// tokenquota's page: the overview (#/) and a session (#/session/<id>), read from the
// HTTP API every 2 seconds. Plain JavaScript, no build step; the chart is uPlot.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "tokenquota.token";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  paused: false,
  timer: null,
  who: null,
  routeKey: null,
  generation: 0,
  sessions: { offset: 0, limit: 25, order: "recent", prefix: "" },
  scale: "minute",
  chart: null,
};

// ---------------------------------------------------------------- helpers

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (response.status === 401) {
    askToken(body && body.detail ? String(body.detail) : "This API needs a token.");
    throw new ApiError(401, "an API token is needed");
  }
  if (!response.ok && !(options.acceptStatus || []).includes(response.status)) {
    throw new ApiError(response.status, describe(body, response.status));
  }
  return body;
}

function describe(body, status) {
  if (body && body.detail !== undefined) {
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    }
    if (typeof body.detail === "object") return JSON.stringify(body.detail);
    return String(body.detail);
  }
  return `HTTP ${status}`;
}

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

const intFormat = new Intl.NumberFormat("en-US");
function int(n) {
  return n === null || n === undefined ? "–" : intFormat.format(n);
}
function usd(s) {
  if (s === null || s === undefined) return "–";
  const n = Number(s);
  const digits = n !== 0 && Math.abs(n) < 1 ? 4 : 2;
  return "$" + n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}
// A ratio (a decimal string with 4 places, as the API sends it) as a percentage with one
// decimal, rounded half up in integers (floats would round 0.0085 either way).
function pct(ratio) {
  const tenThousandths = Math.round(Number(ratio) * 10000);
  return (Math.floor((tenThousandths + 5) / 10) / 10).toFixed(1) + "%";
}
function time(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}
function clock(iso) {
  return iso ? new Date(iso).toISOString().slice(11, 19) : "–";
}
function sessionLink(id) {
  return `<a href="#/session/${encodeURIComponent(id)}" data-session="${esc(id)}">${esc(id)}</a>`;
}

// The threshold state of a window, by its utilization and the session's thresholds.
function level(utilization, warning, critical) {
  const u = Number(utilization);
  if (u >= 1) return "full";
  if (u >= Number(critical)) return "critical";
  if (u >= Number(warning)) return "warning";
  return "ok";
}

function bar(window, warning, critical, name) {
  const lv = level(window.utilization, warning, critical);
  const width = Math.min(Number(window.utilization), 1) * 100;
  return `<div class="bar" data-window="${name}" data-level="${lv}"
      data-used="${window.used}" data-limit="${window.limit}" data-remaining="${window.remaining}"
      data-utilization="${window.utilization}"
      title="${esc(name)}: ${int(window.used)} of ${int(window.limit)} tokens">
    <span class="track" role="meter" aria-label="${esc(name)} utilization" aria-valuemin="0"
      aria-valuemax="100" aria-valuenow="${(Number(window.utilization) * 100).toFixed(1)}">
      <span class="fill" style="width:${width.toFixed(1)}%"></span></span>
    <span class="pct">${pct(window.utilization)}</span>
    <span class="state" data-level="${lv}">${lv}</span>
  </div>`;
}

function table(headers, rows, empty) {
  if (!rows.length) return `<p class="muted">${esc(empty)}</p>`;
  const head = headers
    .map((h) => `<th${h.endsWith("#") ? ' class="num"' : ""}>${esc(h.replace(/#$/, ""))}</th>`)
    .join("");
  return `<div class="table-wrap"><table><thead><tr>${head}</tr></thead><tbody>${rows.join("")}</tbody></table></div>`;
}

function setHTML(id, html) {
  const node = document.getElementById(id);
  if (node) node.innerHTML = html;
}

function showError(message) {
  const node = document.getElementById("error");
  node.hidden = !message;
  node.textContent = message || "";
}

// ---------------------------------------------------------------- token

function askToken(message) {
  const dialog = document.getElementById("token-dialog");
  const error = document.getElementById("token-error");
  error.hidden = !state.token;
  error.textContent = state.token ? message : "";
  if (!dialog.open) dialog.showModal();
}

document.getElementById("token-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = document.getElementById("token-input").value.trim();
  if (!value) return;
  state.token = value;
  sessionStorage.setItem(TOKEN_KEY, value);
  document.getElementById("token-dialog").close();
  state.who = null;
  state.routeKey = null;
  await refresh();
});

document.getElementById("token-button").addEventListener("click", () => {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("token-input").value = "";
  askToken("");
});

// ---------------------------------------------------------------- pause

document.getElementById("pause").addEventListener("click", (event) => {
  state.paused = !state.paused;
  clearTimeout(state.timer);
  event.target.setAttribute("aria-pressed", String(state.paused));
  event.target.textContent = state.paused ? "Resume" : "Pause";
  document.getElementById("updated").textContent = state.paused ? "paused" : "";
  if (!state.paused) refresh();
});

// ---------------------------------------------------------------- health (both pages)

function renderHealthPill(health) {
  // A stopped worker means nothing new is counted: say so above everything, in words.
  const worker = health.worker;
  setHTML("alarm", worker.status === "down"
    ? `<div class="banner down" role="alert" id="worker-down">Worker down: ${esc(worker.reason)}. Events are not being applied; the numbers below are not moving.</div>`
    : "");
  const pill = document.getElementById("health-pill");
  pill.dataset.status = health.status;
  pill.textContent = `pipeline: ${health.status}`;
  pill.title = ["broker", "database", "worker", "dlq", "spool"]
    .map((c) => `${c}: ${health[c].status} (${health[c].reason})`)
    .join("\n");
}

// ---------------------------------------------------------------- overview

function overviewSkeleton() {
  return `
  <section id="totals" aria-label="Totals"><div class="cards" id="cards"></div></section>
  <section id="sessions"><h2>Sessions</h2>
    <div class="controls">
      <label>Sort <select id="order">
        <option value="recent">most recent</option>
        <option value="utilization">most utilized</option>
        <option value="name">by id</option></select></label>
      <label>Session id starts with <input id="prefix" type="search" size="18"></label>
      <span class="spacer"></span>
      <button type="button" id="prev">Previous</button>
      <span id="range" class="muted"></span>
      <button type="button" id="next">Next</button>
    </div>
    <div id="sessions-body"></div></section>
  <section id="tree"><h2>Budget tree <span class="muted">(utilization: the fullest of a node's token and USD windows)</span></h2>
    <div id="tree-body"></div></section>
  <section id="timeline"><h2>Tokens over time</h2>
    <div class="controls">
      <label><input type="radio" name="scale" value="minute" checked> per minute, last hour</label>
      <label><input type="radio" name="scale" value="hour"> per hour, last 2 days</label>
    </div>
    <div id="chart"></div></section>
  <section id="pipeline" class="half"><h2>Pipeline health</h2><div id="pipeline-body"></div></section>
  <section id="costs" class="half"><h2>Cost by API and model <span class="muted">(last 30 days)</span></h2>
    <div id="costs-body"></div></section>
  <section id="decisions" class="half"><h2>Recent reservation decisions</h2><div id="decisions-body"></div></section>
  <section id="alerts" class="half"><h2>Recent alerts</h2><div id="alerts-body"></div></section>`;
}

function bindOverview() {
  const s = state.sessions;
  const order = document.getElementById("order");
  order.value = s.order;
  order.addEventListener("change", () => { s.order = order.value; s.offset = 0; refresh(); });
  const prefix = document.getElementById("prefix");
  prefix.value = s.prefix;
  let debounce = null;
  prefix.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { s.prefix = prefix.value.trim(); s.offset = 0; refresh(); }, 250);
  });
  document.getElementById("prev").addEventListener("click", () => {
    s.offset = Math.max(0, s.offset - s.limit); refresh();
  });
  document.getElementById("next").addEventListener("click", () => { s.offset += s.limit; refresh(); });
  for (const radio of document.querySelectorAll('input[name="scale"]')) {
    radio.checked = radio.value === state.scale;
    radio.addEventListener("change", () => { state.scale = radio.value; refresh(); });
  }
  state.chart = null;
}

async function loadOverview() {
  const s = state.sessions;
  const query = new URLSearchParams({ offset: s.offset, limit: s.limit, order: s.order });
  if (s.prefix) query.set("prefix", s.prefix);
  const [overview, health, sessions, timeline, byApi, byModel, decisions, alerts, tree] = await Promise.all([
    api("/v1/overview"),
    api("/readyz", { acceptStatus: [503] }),
    api("/v1/sessions?" + query),
    api(`/v1/timeline?scale=${state.scale}&hours=48`),
    api("/v1/costs?by=api"),
    api("/v1/costs?by=model"),
    api("/v1/decisions?limit=15"),
    api("/v1/alerts?limit=10"),
    api("/v1/accounts"),
  ]);
  return { overview, health, sessions, timeline, byApi, byModel, decisions, alerts, tree };
}

function renderOverview(d) {
  const o = d.overview;
  const cards = [
    ["tokens_today", "Tokens today", int(o.tokens_today)],
    ["cost_usd_today", "Cost today", usd(o.cost_usd_today)],
    ["tokens_month", "Tokens this month", int(o.tokens_month)],
    ["cost_usd_month", "Cost this month", usd(o.cost_usd_month)],
    ["sessions_active_today", "Sessions active today", int(o.sessions_active_today)],
    ["events_last_minute", "Events applied, last minute", int(o.events_last_minute)],
  ];
  setHTML("cards", cards.map(([key, label, value]) =>
    `<div class="card" data-metric="${key}" data-value="${esc(o[key])}"><span class="label">${label}</span><span class="value">${value}</span></div>`).join(""));
  renderPipeline(d.health, o);
  renderCosts(d.byApi, d.byModel);
  renderSessions(d.sessions);
  renderTree(d.tree);
  renderChart(d.timeline);
  renderDecisions("decisions-body", d.decisions, true);
  renderAlerts("alerts-body", d.alerts, true);
}

function renderPipeline(health, overview) {
  const worker = health.worker;
  const details = worker.details || {};
  const components = ["broker", "database", "worker", "dlq", "spool"].map((c) =>
    `<tr data-component="${c}"><td>${c}</td><td><span class="status" data-status="${health[c].status}">${health[c].status}</span></td><td style="white-space:normal">${esc(health[c].reason)}</td></tr>`);
  const lag = (overview.lag || []).map((p) =>
    `<span class="lag" data-partition="${p.partition}" data-lag="${p.lag ?? ""}" title="log clock ${clock(p.log_clock)}">p${p.partition}: <b>${int(p.lag)}</b></span>`);
  const age = details.last_batch_age_seconds;
  setHTML("pipeline-body", `
    <dl class="kv">
      <dt>Status</dt><dd><span class="status" data-status="${health.status}" id="pipeline-status">${health.status}</span></dd>
      <dt>Last batch applied</dt><dd id="batch-age">${age === null || age === undefined ? "never" : age.toFixed(1) + " s ago"}</dd>
      <dt>Dead letters (unreviewed)</dt><dd id="dlq-depth">${int(overview.dlq_depth)}</dd>
      <dt>Total lag</dt><dd id="total-lag">${int(overview.total_lag)}</dd>
    </dl>
    ${table(["Component", "State", "Why"], components, "")}
    <h2 style="margin-top:10px">Consumer lag per partition <span class="muted">(${esc((overview.lag[0] || {}).topic || "")})</span></h2>
    ${lag.length ? `<div class="lags">${lag.join("")}</div>` : `<p class="muted">${esc(overview.broker_error ? "Broker: " + overview.broker_error : "No partitions.")}</p>`}`);
}

function hbars(rows, nameOf, empty) {
  if (!rows.length) return `<p class="muted">${esc(empty)}</p>`;
  const max = Math.max(...rows.map((r) => Number(r.cost_usd)), 0) || 1;
  return rows.slice(0, 8).map((r) =>
    `<div class="hbar" data-name="${esc(nameOf(r))}" data-cost="${esc(r.cost_usd)}"><span class="name" title="${esc(nameOf(r))}">${esc(nameOf(r))}</span>
      <span class="track"><span class="fill" style="width:${(Number(r.cost_usd) / max * 100).toFixed(1)}%"></span></span>
      <span>${usd(r.cost_usd)} <span class="muted">(${int(r.input_tokens + r.output_tokens)} tokens)</span></span></div>`).join("");
}

function renderCosts(byApi, byModel) {
  setHTML("costs-body", `<h3 class="muted" style="font-size:12px">By API</h3>${hbars(byApi, (r) => r.api_name, "No API costs yet.")}
    <h3 class="muted" style="font-size:12px">By model</h3>${hbars(byModel, (r) => r.model, "No API costs yet.")}`);
}

function renderSessions(page) {
  const rows = page.sessions.map((s) => `<tr data-session-row="${esc(s.session_id)}">
      <td>${sessionLink(s.session_id)}</td>
      <td>${bar(s.windows.daily, s.warning_threshold, s.critical_threshold, "daily")}<span class="muted">${int(s.windows.daily.used)} / ${int(s.windows.daily.limit)}</span></td>
      <td>${bar(s.windows.monthly, s.warning_threshold, s.critical_threshold, "monthly")}<span class="muted">${int(s.windows.monthly.used)} / ${int(s.windows.monthly.limit)}</span></td>
      <td>${bar(s.windows.total, s.warning_threshold, s.critical_threshold, "total")}<span class="muted">${int(s.windows.total.used)} / ${int(s.windows.total.limit)}</span></td>
      <td class="num">${int(s.tokens_held)}</td>
      <td>${clock(s.last_activity)}</td></tr>`);
  setHTML("sessions-body", table(["Session", "Daily", "Monthly", "Total (hard limit)", "Held#", "Last activity"], rows,
    page.prefix ? "No session id starts with that." : "No sessions yet: no event has named one."));
  const first = page.total ? page.offset + 1 : 0;
  const last = Math.min(page.offset + page.sessions.length, page.total);
  document.getElementById("range").textContent = `${int(first)}–${int(last)} of ${int(page.total)}`;
  document.getElementById("range").dataset.total = page.total;
  document.getElementById("prev").disabled = page.offset === 0;
  document.getElementById("next").disabled = page.offset + page.limit >= page.total;
}

// The budget tree: each node indented under its parent, with a bar at its utilization
// (the fullest of its token and USD windows, as the API computes it) and that window's
// used / limit. A node without a BudgetSet does not limit: "no limit".
const TREE_SHOWN = 200;
const NODE_WINDOWS = [
  ["today", "tokens_used_today", "daily_limit", false],
  ["this month", "tokens_used_month", "monthly_limit", false],
  ["in all", "tokens_used_total", "hard_limit", false],
  ["today", "usd_used_today", "daily_usd_limit", true],
  ["this month", "usd_used_month", "monthly_usd_limit", true],
  ["in all", "usd_used_total", "total_usd_limit", true],
];

function fullestWindow(node) {
  let best = null;
  for (const [when, usedKey, limitKey, money] of NODE_WINDOWS) {
    const limit = node[limitKey];
    if (limit === null || limit === undefined) continue;
    const used = Number(node[usedKey]);
    const ratio = Number(limit) ? used / Number(limit) : (used ? 1 : 0);
    if (best === null || ratio > best.ratio) best = { when, used: node[usedKey], limit, money, ratio };
  }
  return best;
}

function nodeBar(node) {
  if (node.utilization === null) {
    return `<span class="no-limit muted" data-level="none">no limit</span>`;
  }
  const lv = level(node.utilization, node.warning_threshold, node.critical_threshold);
  const width = Math.min(Number(node.utilization), 1) * 100;
  return `<div class="bar" data-level="${lv}" data-utilization="${esc(node.utilization)}">
    <span class="track" role="meter" aria-label="${esc(node.account)} utilization" aria-valuemin="0"
      aria-valuemax="100" aria-valuenow="${(Number(node.utilization) * 100).toFixed(1)}">
      <span class="fill" style="width:${width.toFixed(1)}%"></span></span>
    <span class="pct">${pct(node.utilization)}</span>
    <span class="state" data-level="${lv}">${lv}</span>
  </div>`;
}

function renderTree(nodes) {
  const rows = nodes.slice(0, TREE_SHOWN).map((n) => {
    const name = n.account.split("/").pop();
    const w = fullestWindow(n);
    const usedLimit = w === null
      ? `${int(n.tokens_used_today)} tokens today <span class="muted">/ no limit</span>`
      : (w.money ? `${usd(w.used)} / ${usd(w.limit)}` : `${int(w.used)} / ${int(w.limit)} tokens`) + ` <span class="muted">${w.when}</span>`;
    const heldUsd = Number(n.usd_held) ? ` + ${usd(n.usd_held)}` : "";
    return `<tr data-account="${esc(n.account)}" data-depth="${n.depth}">
      <td class="node" style="padding-left:${8 + (n.depth - 1) * 18}px" title="${esc(n.account)}">${n.depth === 1 ? `<b>${esc(name)}</b>` : esc(name)}</td>
      <td>${nodeBar(n)}</td>
      <td class="num" data-field="used-limit">${usedLimit}</td>
      <td class="num" data-field="held">${int(n.tokens_held)}${heldUsd}</td>
      <td class="num" data-field="cost-month">${usd(n.cost_usd_month)}</td></tr>`;
  });
  const more = nodes.length > TREE_SHOWN
    ? `<p class="muted">…and ${int(nodes.length - TREE_SHOWN)} more nodes (GET /v1/accounts?root=).</p>` : "";
  setHTML("tree-body", table(["Account", "Utilization", "Used / limit#", "Held#", "Cost this month#"], rows,
    "No budget tree yet: no event has named an account.") + more);
}

function renderChart(timeline) {
  const node = document.getElementById("chart");
  if (!node || typeof uPlot === "undefined") return;
  const xs = timeline.points.map((p) => Date.parse(p.at) / 1000);
  const tokens = timeline.points.map((p) => p.tokens_used);
  const rejected = timeline.points.map((p) => p.reservations_rejected);
  node.dataset.tokens = String(tokens.reduce((a, b) => a + b, 0));
  const data = [xs, tokens, rejected];
  const width = Math.max(node.clientWidth, 280);
  if (state.chart && state.chart.scale === timeline.scale) {
    state.chart.plot.setData(data);
    if (Math.abs(state.chart.plot.width - width) > 4) state.chart.plot.setSize({ width, height: 200 });
    return;
  }
  if (state.chart) state.chart.plot.destroy();
  node.innerHTML = "";
  const bars = uPlot.paths.bars({ size: [0.8, 40] });
  const plot = new uPlot({
    width, height: 200,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    scales: { y: { range: (u, min, max) => [0, Math.max(max, 1)] }, r: { range: (u, min, max) => [0, Math.max(max, 1)] } },
    series: [
      { label: "UTC" },
      { label: "tokens", stroke: "#2b6cb0", fill: "rgba(43,108,176,0.35)", paths: bars, value: (u, v) => v === null ? "–" : int(v) },
      { label: "reservations refused", stroke: "#c53030", scale: "r", width: 2, value: (u, v) => v === null ? "–" : int(v) },
    ],
    axes: [{}, { values: (u, ticks) => ticks.map((t) => int(t)), size: 60 }, { side: 1, scale: "r", grid: { show: false } }],
  }, data, node);
  state.chart = { plot, scale: timeline.scale };
}

function renderDecisions(id, rows, withSession) {
  const html = rows.map((r) => `<tr data-reservation="${esc(r.reservation_id)}">
      <td>${clock(r.decided_at)}</td>${withSession ? `<td>${sessionLink(r.session_id)}</td>` : ""}
      <td class="num">${int(r.tokens)}</td>
      <td><span class="status" data-status="${esc(r.status)}">${esc(r.status)}</span></td>
      <td style="white-space:normal">${r.reason ? esc(r.reason) : ""}${r.status === "rejected" ? ` <span class="muted">(available ${int(r.available_tokens)} of ${int(r.limit_tokens)})</span>` : ""}</td>
      <td class="num">${r.settled_tokens === null ? "" : int(r.settled_tokens)}</td></tr>`);
  setHTML(id, table(["Decided", ...(withSession ? ["Session"] : []), "Tokens#", "Status", "Reason", "Settled#"], html, "No reservations yet."));
}

function renderAlerts(id, rows, withSession) {
  const html = rows.map((a) => `<tr data-alert="${esc(a.alert_id)}">
      <td>${clock(a.created_at)}</td>${withSession ? `<td>${sessionLink(a.session_id)}</td>` : ""}
      <td>${esc(a.window_name)}</td>
      <td><span class="state" data-level="${a.level === "exhausted" ? "full" : esc(a.level)}">${esc(a.level)}</span></td>
      <td class="num">${int(a.used_tokens)} / ${int(a.limit_tokens)}</td>
      <td>${esc(a.delivery || "")}</td></tr>`);
  setHTML(id, table(["When", ...(withSession ? ["Session"] : []), "Window", "Level", "Used / limit#", "Webhook"], html, "No alerts yet."));
}

// ---------------------------------------------------------------- session page

function sessionSkeleton(id) {
  return `
  <h1>Session <span id="session-id">${esc(id)}</span> <a href="#/" style="font-size:13px">back to overview</a></h1>
  <section id="session-windows"><h2>Windows</h2><div id="windows-body"></div></section>
  <section id="session-budget" class="half"><h2>Budget</h2><div id="budget-body"></div><div id="budget-form-slot"></div></section>
  <section id="session-apis" class="half"><h2>External APIs</h2><div id="apis-body"></div></section>
  <section id="session-reservations" class="half"><h2>Reservations</h2><div id="reservations-body"></div></section>
  <section id="session-tasks" class="half"><h2>Tasks</h2><div id="tasks-body"></div></section>
  <section id="session-alerts" class="half"><h2>Alerts</h2><div id="session-alerts-body"></div></section>
  <section id="session-events" class="half"><h2>Recent events</h2><div id="events-body"></div></section>`;
}

async function loadSession(id) {
  const path = encodeURIComponent(id);
  const [report, health, decisions, tasks, apis, events, alerts] = await Promise.all([
    api(`/v1/sessions/${path}`),
    api("/readyz", { acceptStatus: [503] }),
    api(`/v1/decisions?session_id=${path}&limit=20`),
    api(`/v1/sessions/${path}/tasks?limit=50`),
    api(`/v1/sessions/${path}/apis`),
    api(`/v1/sessions/${path}/integration-logs?limit=20`),
    api(`/v1/alerts?session_id=${path}&limit=10`),
  ]);
  return { report, health, decisions, tasks, apis, events, alerts };
}

function renderSession(d) {
  const r = d.report;
  const lim = r.limits;
  const windows = ["daily", "monthly", "total"].map((name) => {
    const w = r.windows[name];
    return `<div class="window" data-window-card="${name}"><h3 style="margin:0 0 4px;font-size:13px">${name === "total" ? "total (hard limit)" : name}</h3>
      ${bar(w, lim.warning_threshold, lim.critical_threshold, name)}
      <dl class="kv"><dt>Used</dt><dd data-field="used">${int(w.used)}</dd>
      <dt>Limit</dt><dd data-field="limit">${int(w.limit)}</dd>
      <dt>Remaining</dt><dd data-field="remaining">${int(w.remaining)}</dd>
      <dt>Fold's alert state</dt><dd>${esc(w.alert)}</dd></dl></div>`;
  });
  setHTML("windows-body", `<div class="windows">${windows.join("")}</div>
    <dl class="kv" style="margin-top:10px">
      <dt>Available now</dt><dd id="available">${int(r.available_tokens)} <span class="muted">(bound by ${esc(r.binding_limit)})</span></dd>
      <dt>Held by reservations</dt><dd id="held">${int(r.tokens_held)} in ${int(r.outstanding_reservations)}</dd>
      <dt>Reservations</dt><dd>${int(r.reservations_accepted)} accepted, ${int(r.reservations_rejected)} rejected</dd>
      <dt>Overage</dt><dd>${int(r.overage_tokens)}</dd>
      <dt>Cost</dt><dd id="cost">${usd(r.cost_usd_today)} today, ${usd(r.cost_usd_month)} this month, ${usd(r.cost_usd)} in all</dd>
      <dt>Last activity</dt><dd>${time(r.last_activity)}</dd></dl>`);
  setHTML("budget-body", `<dl class="kv"><dt>Daily</dt><dd>${int(lim.daily_limit)}</dd><dt>Monthly</dt><dd>${int(lim.monthly_limit)}</dd>
    <dt>Hard</dt><dd>${int(lim.hard_limit)}</dd><dt>Warning at</dt><dd>${pct(lim.warning_threshold)}</dd>
    <dt>Critical at</dt><dd>${pct(lim.critical_threshold)}</dd><dt>Source</dt><dd>${esc(lim.budget_source)}</dd></dl>`);
  renderBudgetForm(r);
  setHTML("apis-body", table(["API", "Requests#", "In#", "Out#", "Cost#", "Rate limit left#", "Resets"],
    d.apis.map((a) => `<tr data-api="${esc(a.api_name)}"><td>${esc(a.api_name)}</td><td class="num">${int(a.requests)}</td>
      <td class="num">${int(a.input_tokens)}</td><td class="num">${int(a.output_tokens)}</td><td class="num">${usd(a.cost_usd)}</td>
      <td class="num">${int(a.rate_limit_remaining)}</td><td>${a.rate_limit_reset ? time(a.rate_limit_reset) : "–"}</td></tr>`),
    "No external API calls."));
  renderDecisions("reservations-body", d.decisions, false);
  setHTML("tasks-body", table(["Task", "Allocated#", "Used#", "Status", "Updated"],
    d.tasks.map((t) => `<tr data-task="${esc(t.task_id)}"><td>${esc(t.task_id)}</td><td class="num">${int(t.allocated_tokens)}</td>
      <td class="num">${int(t.tokens_used)}</td><td>${esc(t.status)}</td><td>${clock(t.updated_at)}</td></tr>`),
    "No tasks."));
  renderAlerts("session-alerts-body", d.alerts, false);
  setHTML("events-body", table(["When", "Action", "Integration", "Tokens#", "Status"],
    d.events.map((e) => `<tr data-event="${esc(e.event_id)}"><td>${clock(e.created_at)}</td><td>${esc(e.action)}</td>
      <td>${esc(e.integration_type)}/${esc(e.component_name)}</td><td class="num">${int(e.tokens_used)}</td>
      <td><span class="status" data-status="${esc(e.status)}">${esc(e.status)}</span>${e.error_message ? " " + esc(e.error_message) : ""}</td></tr>`),
    "No events."));
}

function renderBudgetForm(report) {
  const slot = document.getElementById("budget-form-slot");
  if (!slot || slot.dataset.ready || !state.who) return;
  slot.dataset.ready = "1";
  if (state.who.role !== "admin") {
    slot.innerHTML = `<p class="muted">Changing the budget needs an admin token.</p>`;
    return;
  }
  const lim = report.limits;
  slot.innerHTML = `<h3 style="font-size:13px;margin:12px 0 6px">Change the budget</h3>
    <form class="budget" id="budget-form">
      <label>Daily limit<input name="daily_limit" type="number" min="0" step="1" required value="${lim.daily_limit}"></label>
      <label>Monthly limit<input name="monthly_limit" type="number" min="0" step="1" required value="${lim.monthly_limit}"></label>
      <label>Hard limit<input name="hard_limit" type="number" min="0" step="1" required value="${lim.hard_limit}"></label>
      <label>Warning (0–1]<input name="warning_threshold" type="text" inputmode="decimal" value="${esc(lim.warning_threshold)}"></label>
      <label>Critical (0–1]<input name="critical_threshold" type="text" inputmode="decimal" value="${esc(lim.critical_threshold)}"></label>
      <button type="submit">Set budget</button>
    </form><p id="budget-result" aria-live="polite"></p>`;
  document.getElementById("budget-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const body = {};
    for (const key of ["daily_limit", "monthly_limit", "hard_limit"]) body[key] = Number(form.get(key));
    for (const key of ["warning_threshold", "critical_threshold"]) {
      const v = String(form.get(key) || "").trim();
      if (v) body[key] = v;
    }
    const result = document.getElementById("budget-result");
    result.className = "muted";
    result.textContent = "Setting…";
    try {
      await api(`/v1/sessions/${encodeURIComponent(report.session_id)}/budget`, {
        method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      result.className = "ok-text";
      result.textContent = "Budget set and applied.";
      refresh();
    } catch (error) {
      result.className = "error-text";
      result.textContent = `Not set: ${error.message}`;
    }
  });
}

// ---------------------------------------------------------------- routing and refresh

function route() {
  const match = location.hash.match(/^#\/session\/(.+)$/);
  return match ? { name: "session", id: decodeURIComponent(match[1]) } : { name: "overview" };
}

async function refresh() {
  clearTimeout(state.timer);
  const generation = ++state.generation;
  try {
    if (!state.who) {
      state.who = await api("/v1/whoami");
      document.getElementById("token-button").hidden = !state.who.tokens_required;
    }
    const r = route();
    const key = r.name === "session" ? "session:" + r.id : "overview";
    const main = document.getElementById("main");
    if (state.routeKey !== key) {
      state.routeKey = key;
      main.innerHTML = r.name === "session" ? sessionSkeleton(r.id) : overviewSkeleton();
      if (r.name === "overview") bindOverview();
    }
    const data = r.name === "session" ? await loadSession(r.id) : await loadOverview();
    if (generation !== state.generation) return; // a newer refresh started meanwhile
    renderHealthPill(data.health);
    if (r.name === "session") renderSession(data); else renderOverview(data);
    showError("");
    const stamp = document.getElementById("updated");
    stamp.textContent = state.paused ? "paused" : "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    document.body.dataset.refreshed = String(generation);
  } catch (error) {
    if (error.status === 404 && route().name === "session") {
      showError(`No event has named session ${route().id}.`);
    } else if (error.status !== 401) {
      showError(`Cannot read the API: ${error.message}`);
    }
  } finally {
    if (generation === state.generation && !state.paused) {
      state.timer = setTimeout(refresh, REFRESH_MS);
    }
  }
}

window.addEventListener("hashchange", () => { refresh(); });
window.addEventListener("resize", () => { if (state.chart) state.chart.plot.setSize({ width: Math.max(document.getElementById("chart").clientWidth, 280), height: 200 }); });
refresh();

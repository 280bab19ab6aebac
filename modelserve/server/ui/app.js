/* modelserve status page: polls /ui/api/models/{model} and draws it. No build step, no network beyond
 * this server. Charts: uPlot (vendored). Everything read from the JSON is escaped before it is shown. */
"use strict";

const POLL_MS = 2000;
const PALETTE = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#1098ad", "#f08c00", "#c2255c", "#495057"];
// scope: in a fleet, the monitoring figures shown are the fleet's (every replica's counts merged) or
// this replica's own; history charts and serving metrics are always this replica's.
const state = { model: null, charts: {}, colors: {}, timer: null, scope: "fleet", last: null };

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function num(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toFixed(digits);
}
function pct(value, digits = 1) {
  return value === null || value === undefined ? "–" : (100 * value).toFixed(digits) + "%";
}
function byVersion(a, b) {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}
function color(version) {
  if (!(version in state.colors)) state.colors[version] = PALETTE[Object.keys(state.colors).length % PALETTE.length];
  return state.colors[version];
}
function swatch(version) {
  return `<span class="swatch" style="background:${color(version)}"></span>`;
}
function $(id) {
  return document.getElementById(id);
}
// The read token (servers started with --read-token) lives in this tab's sessionStorage, entered
// in the sign-in form and sent as an Authorization header: never in a URL, where history, logs
// and Referer headers would keep it. It is gone when the tab closes.
const TOKEN_KEY = "modelserve.readToken";
class SignInNeeded extends Error {}
function readToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}
function dropTokenFromUrl() {
  const query = new URLSearchParams(location.search);
  if (!query.has("token")) return false;
  query.delete("token");
  const rest = query.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  return true;
}
async function getJSON(url) {
  const token = readToken();
  const headers = token ? { authorization: "Bearer " + token } : {};
  const response = await fetch(url, { cache: "no-store", headers });
  if (response.status === 401 || response.status === 403) {
    throw new SignInNeeded(token ? "this token is not accepted" : "this server needs a read token");
  }
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}
function showSignIn(message) {
  clearTimeout(state.timer);
  $("signin-message").textContent = message;
  $("signin").hidden = false;
  $("main").hidden = true;
  $("signout").hidden = true;
  $("token-input").focus();
}
function setUpSignIn() {
  $("signin").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token-input").value = "";
    $("signin").hidden = true;
    $("main").hidden = false;
    begin();
  });
  $("signout").addEventListener("click", (event) => {
    event.preventDefault();
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn("signed out");
  });
}
function begin() {
  start().catch((error) => {
    if (error instanceof SignInNeeded) return showSignIn(error.message);
    $("pulse").className = "pulse off";
    $("updated").textContent = String(error.message || error);
  });
}

async function start() {
  const listing = await getJSON("api/models");
  $("service").textContent = listing.service;
  const nav = $("models");
  nav.innerHTML = "";
  $("signout").hidden = !readToken();
  for (const name of listing.models) {
    const button = document.createElement("button");
    button.textContent = name;
    button.dataset.model = name;
    button.onclick = () => select(name);
    nav.appendChild(button);
  }
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (listing.models.length) select(listing.models.includes(wanted) ? wanted : listing.models[0]);
  else $("updated").textContent = "no models loaded";
}

function select(model) {
  state.model = model;
  location.hash = encodeURIComponent(model);
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.model === model);
  for (const chart of Object.values(state.charts)) chart.destroy();
  state.charts = {};
  clearTimeout(state.timer);
  poll();
}

async function poll() {
  const model = state.model;
  try {
    const snapshot = await getJSON(`api/models/${encodeURIComponent(model)}`);
    if (model !== state.model) return;
    render(snapshot);
    $("pulse").className = "pulse on";
    $("updated").textContent = "updated " + new Date(snapshot.generated_at * 1000).toLocaleTimeString();
  } catch (error) {
    if (error instanceof SignInNeeded) return showSignIn(error.message);
    $("pulse").className = "pulse off";
    $("updated").textContent = String(error.message || error);
  }
  state.timer = setTimeout(poll, POLL_MS);
}

function render(s) {
  state.last = s;
  const fleet = s.monitoring.fleet;
  // `view`: the per-version monitoring figures drawn below, the fleet's or this replica's.
  s.view = fleet && state.scope === "fleet" ? fleet.versions : s.monitoring.versions;
  const versions = new Set([
    ...(s.status.warm || []).map((w) => w.version),
    ...Object.keys(s.monitoring.history),
    ...Object.keys(s.monitoring.versions),
    ...Object.keys(fleet ? fleet.versions : {}),
  ]);
  [...versions].sort(byVersion).forEach(color);
  renderScope(s);
  renderCards(s);
  renderVersions(s);
  renderCharts(s);
  renderDistribution(s);
  renderDrift(s);
  renderTimeline(s);
  renderShadow(s);
  renderExperiment(s);
}

function renderScope(s) {
  const fleet = s.monitoring.fleet;
  $("scope").hidden = !fleet;
  if (!fleet) return;
  for (const button of document.querySelectorAll("#scope button")) {
    button.classList.toggle("active", button.dataset.scope === state.scope);
  }
  const missing = fleet.missing.map((r) => esc(r)).join(", ");
  $("fleet-state").innerHTML = fleet.complete
    ? `<span class="muted">fleet: ${fleet.replicas.length} replicas, all reporting</span>`
    : `<span class="warn">fleet figures incomplete: no recent figures from ${missing}</span>`;
}
function setUpScope() {
  for (const button of document.querySelectorAll("#scope button")) {
    button.addEventListener("click", () => {
      state.scope = button.dataset.scope;
      if (state.last) render(state.last);
    });
  }
}

function liveVersion(s) {
  return s.status.live_version;
}
function candidateVersion(s) {
  const rollout = s.rollout && s.rollout.rollout;
  if (rollout && rollout.active) return rollout.candidate;
  return (s.status.policy || {}).candidate || s.status.candidate || null;
}

function renderCards(s) {
  const live = liveVersion(s);
  const candidate = candidateVersion(s);
  $("live-version").innerHTML = live ? `${swatch(live)}v${esc(live)}` : "–";
  const slot = s.status.live_slot ? `slot ${esc(s.status.live_slot)}` : "";
  $("live-sub").textContent = slot;
  $("candidate-version").innerHTML = candidate ? `${swatch(candidate)}v${esc(candidate)}` : "none";
  const shadows = s.split.shadow.length ? `shadow: ${s.split.shadow.map((v) => "v" + v).join(", ")}` : "";
  const lastRollout = s.rollout && s.rollout.rollout;
  const rolloutNote = lastRollout && lastRollout.candidate === candidate ? `rollout ${lastRollout.state}` : "";
  const weight = candidate ? s.split.declared[candidate] : 0;
  const traffic = weight ? `${num(weight, 0)}% of traffic` : "";
  $("candidate-sub").textContent = [traffic, shadows, rolloutNote].filter(Boolean).join(" · ") || "staged, no traffic";

  const declared = Object.entries(s.split.declared).sort((a, b) => byVersion(a[0], b[0]));
  $("split").innerHTML =
    `<div class="splitbar" id="splitbar">` +
    declared
      .filter(([, w]) => w > 0)
      .map(([v, w]) => `<div style="width:${w}%;background:${color(v)}" title="v${esc(v)} ${num(w, 1)}%">v${esc(v)} ${num(w, 0)}%</div>`)
      .join("") +
    `</div>`;
  const observed = Object.entries(s.split.observed).sort((a, b) => byVersion(a[0], b[0]));
  $("split-sub").textContent = observed.length
    ? "observed, last minute: " + observed.map(([v, w]) => `v${v} ${num(w, 1)}%`).join(" · ")
    : "no requests in the last minute";

  const rollout = s.rollout && s.rollout.rollout;
  if (rollout) {
    $("rollout-state").textContent = rollout.state;
    $("rollout-sub").textContent = `to v${rollout.candidate} · stage ${rollout.stage} (${rollout.stage_index + 1}/${rollout.stage_count}) · ${rollout.weight}%`;
  } else {
    $("rollout-state").textContent = "none";
    $("rollout-sub").textContent = "no rollout yet";
  }

  const monitored = s.view[live] || Object.values(s.view)[0];
  if (!monitored) {
    $("drift-state").textContent = "–";
    $("drift-sub").textContent = "no traffic monitored yet";
    return;
  }
  const reference = monitored.reference || {};
  const columns = [...monitored.drift.inputs, ...monitored.drift.outputs];
  const drifted = columns.filter((c) => c.drifted);
  const judged = columns.filter((c) => c.drifted !== null);
  if (reference.state !== "ready") {
    $("drift-state").textContent = "reference";
    $("drift-sub").textContent = `capturing: ${reference.rows || 0} rows so far`;
  } else if (!judged.length) {
    $("drift-state").textContent = "waiting";
    $("drift-sub").textContent = "not enough rows in the window yet";
  } else {
    $("drift-state").innerHTML = drifted.length ? `<span style="color:var(--bad)">${drifted.length} drifted</span>` : `<span style="color:var(--ok)">stable</span>`;
    $("drift-sub").textContent = drifted.length ? drifted.map((c) => c.column).slice(0, 4).join(", ") : `${judged.length} columns below PSI ${num(judged[0].threshold, 2)}`;
  }
}

function renderVersions(s) {
  const metrics = {};
  for (const row of s.status.metrics || []) if (row.role === "primary") metrics[row.version] = row;
  const warm = s.status.warm || [];
  const slots = s.status.slots || {};
  const rows = warm.length ? warm : Object.keys(metrics).map((v) => ({ version: v, role: "", slot: "" }));
  $("versions").querySelector("tbody").innerHTML = rows
    .slice()
    .sort((a, b) => byVersion(a.version, b.version))
    .map((w) => {
      const m = metrics[w.version] || {};
      const mon = s.view[w.version] || {};
      const acc = mon.accuracy || {};
      const ci = acc.accuracy_interval ? ` (${pct(acc.accuracy_interval[0])}–${pct(acc.accuracy_interval[1])})` : "";
      const accuracy = acc.accuracy === null || acc.accuracy === undefined ? "–" : `${pct(acc.accuracy)}${ci} · n=${acc.samples}`;
      const described = slots[w.slot] || {};
      const ref = mon.reference ? `${mon.reference.state} (${mon.reference.source || "–"}, ${mon.reference.rows} rows)` : "–";
      const role = w.role ? `<span class="pill ${esc(w.role)}">${esc(w.role)}</span>` : "";
      return `<tr><td>${swatch(w.version)}v${esc(w.version)}</td><td>${role}</td><td>${esc(w.slot || "")}</td>
        <td>${esc(described.execution || "")}</td><td>${m.requests ?? 0}</td><td>${pct(m.error_rate, 2)}</td>
        <td>${ms(m, "p50")}</td><td>${ms(m, "p99")}</td><td>${accuracy}</td><td>${esc(ref)}</td></tr>`;
    })
    .join("");
}

function ms(row, quantile) {
  // JSON carries seconds (`p50_s`); people read milliseconds.
  const seconds = row[quantile + "_s"];
  return seconds !== undefined && seconds !== null ? num(seconds * 1000, 3) : num(null, 3);
}

function aligned(history, metric, scale = 1) {
  const versions = Object.keys(history).filter((v) => (history[v][metric] || []).some((x) => x !== null)).sort(byVersion);
  const times = new Set();
  for (const v of versions) history[v].t.forEach((t) => times.add(t));
  const xs = [...times].sort((a, b) => a - b);
  const index = new Map(xs.map((t, i) => [t, i]));
  const series = versions.map((v) => {
    const ys = new Array(xs.length).fill(null);
    history[v].t.forEach((t, i) => {
      const y = history[v][metric][i];
      ys[index.get(t)] = y === null || y === undefined ? null : y * scale;
    });
    return ys;
  });
  return { versions, data: [xs, ...series] };
}

function renderCharts(s) {
  const history = s.monitoring.history;
  $("history-note").textContent = `one point every ${s.monitoring.history_interval_s} s`;
  const fleetScope = Boolean(s.monitoring.fleet) && state.scope === "fleet";
  for (const figure of document.querySelectorAll("figure.chart")) {
    const metric = figure.dataset.metric;
    // Accuracy and input drift have fleet series too (every replica's counts merged); the others are this replica's.
    const series = fleetScope && figure.dataset.fleet === "1" ? "fleet_" + metric : metric;
    const title = figure.dataset.title + (series === metric ? "" : " · fleet");
    figure.dataset.series = series;
    const { versions, data } = aligned(history, series, Number(figure.dataset.scale || 1));  // s -> ms
    const points = data[0].length;
    figure.dataset.points = String(versions.length ? points : 0);
    const key = series + "|" + versions.join(",");
    if (!versions.length || !points) {
      if (state.charts[metric]) state.charts[metric].destroy();
      delete state.charts[metric];
      figure.innerHTML = `<div class="title">${esc(title)}</div><div class="empty">no data yet</div>`;
      continue;
    }
    const existing = state.charts[metric];
    if (existing && existing._key === key) {
      existing.setData(data);
      continue;
    }
    if (existing) existing.destroy();
    figure.innerHTML = `<div class="title">${esc(title)}</div>`;
    const percent = figure.dataset.percent === "1";
    const opts = {
      width: Math.max(240, figure.clientWidth - 12),
      height: 170,
      legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : percent ? 0.01 : 1] } },
      axes: [
        { stroke: "#6b7385", grid: { stroke: "#eef1f6" }, size: 30 },
        {
          stroke: "#6b7385",
          grid: { stroke: "#eef1f6" },
          size: 52,
          values: (u, ticks) => ticks.map((t) => (percent ? +(100 * t).toPrecision(3) + "%" : +t.toPrecision(3))),
        },
      ],
      series: [{}, ...versions.map((v) => ({ label: "v" + v, stroke: color(v), width: 2, spanGaps: true, points: { size: 4 } }))],
    };
    if (figure.dataset.threshold === "1") {
      opts.hooks = { draw: [(u) => drawThreshold(u, 0.2)] };
    }
    const chart = new uPlot(opts, data, figure);
    chart._key = key;
    state.charts[metric] = chart;
  }
}

function drawThreshold(u, value) {
  const y = u.valToPos(value, "y", true);
  if (!Number.isFinite(y) || y < u.bbox.top || y > u.bbox.top + u.bbox.height) return;
  const ctx = u.ctx;
  ctx.save();
  ctx.strokeStyle = "#dc2626";
  ctx.setLineDash([6, 4]);
  ctx.beginPath();
  ctx.moveTo(u.bbox.left, y);
  ctx.lineTo(u.bbox.left + u.bbox.width, y);
  ctx.stroke();
  ctx.restore();
}

function pickColumn(histograms) {
  const names = Object.keys(histograms);
  return names.find((n) => n.endsWith("[1]")) || names[0];
}

function distributionSeries(s) {
  // One series per version and role: what a version served (primary) and what it predicted in shadow.
  const versions = Object.entries(s.view).sort((a, b) => byVersion(a[0], b[0]));
  const series = [];
  for (const [v, m] of versions) {
    series.push({ version: v, role: "primary", label: `v${v}`, dist: m.distribution });
    if (m.shadow_distribution && m.shadow_distribution.rows) {
      series.push({ version: v, role: "shadow", label: `v${v} shadow`, dist: m.shadow_distribution });
    }
  }
  return series;
}

function renderDistribution(s) {
  const series = distributionSeries(s);
  const withHist = series.filter((x) => Object.keys(x.dist.histograms).length);
  const parts = [];
  if (withHist.length) {
    const column = pickColumn(withHist[0].dist.histograms);
    const first = withHist[0].dist.histograms[column];
    const edges = first.edges;
    // Buckets inside [0, 1] (scores), plus everything below / above merged at the ends.
    const lo = edges.indexOf(0), hi = edges.indexOf(1);
    const inner = lo >= 0 && hi > lo ? [lo + 1, hi] : [0, edges.length - 1];
    const labels = [];
    for (let i = inner[0]; i <= inner[1]; i++) labels.push(edges[i]);
    const shares = withHist.map((x) => {
      const h = x.dist.histograms[column];
      if (!h) return [x, labels.map(() => 0)];
      const total = h.counts.reduce((a, b) => a + b, 0) || 1;
      return [x, labels.map((_, j) => h.counts[inner[0] + j] / total)];
    });
    const max = Math.max(0.01, ...shares.flatMap(([, xs]) => xs));
    const W = 600, H = 170, pad = 24, groupW = (W - pad) / labels.length, barW = Math.max(1, (groupW - 2) / shares.length);
    let bars = "";
    shares.forEach(([x, xs], k) => {
      const opacity = x.role === "shadow" ? ' fill-opacity="0.5"' : "";
      xs.forEach((share, j) => {
        const h = ((H - 22) * share) / max;
        bars += `<rect data-role="${x.role}" x="${pad + j * groupW + k * barW}" y="${H - 18 - h}" width="${barW - 0.5}" height="${h}" fill="${color(x.version)}"${opacity}><title>${esc(x.label)} ≤${labels[j]}: ${pct(share)}</title></rect>`;
      });
    });
    let ticks = "";
    labels.forEach((label, j) => {
      if (j % 4 === 3) ticks += `<text x="${pad + (j + 1) * groupW}" y="${H - 4}" font-size="10" text-anchor="end" fill="#6b7385">${label}</text>`;
    });
    parts.push(
      `<div><div class="muted">${esc(column)}: share of predictions per bucket, by version (shadow: what it predicted unseen) · ` +
        shares.map(([x]) => `${swatch(x.version)}${esc(x.label)}`).join(" ") +
        `</div><svg id="distribution-svg" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">` +
        `<line x1="${pad}" y1="${H - 18}" x2="${W}" y2="${H - 18}" stroke="#e3e6ec"/>${bars}${ticks}</svg></div>`,
    );
  }
  const classes = series.filter((x) => Object.keys(x.dist.classes).length);
  if (classes.length) {
    const output = Object.keys(classes[0].dist.classes)[0];
    const rows = classes.map((x) => {
      const counts = x.dist.classes[output] || {};
      const total = Object.values(counts).reduce((a, b) => a + b, 0) || 1;
      const cells = Object.keys(counts)
        .sort()
        .map((c) => `${esc(c)}: <b>${pct(counts[c] / total)}</b>`)
        .join(" · ");
      return `<tr data-role="${x.role}"><td>${swatch(x.version)}${esc(x.label)}</td><td>${cells}</td><td>${x.dist.rows}</td></tr>`;
    });
    const every = (s.monitoring.sampling || {}).every || 1;
    const sampled = every > 1 ? ` <span class="muted" id="sampling-note" title="past max_rate requests a second, a uniform sample is monitored">(1 in ${every} monitored)</span>` : "";
    parts.push(`<table id="class-shares"><thead><tr><th>version</th><th>${esc(output)} shares</th><th>rows${sampled}</th></tr></thead><tbody>${rows.join("")}</tbody></table>`);
  }
  const fleet = s.monitoring.fleet;
  const shifts = fleet && state.scope === "fleet" ? fleet.output_shift : s.monitoring.output_shift;
  const shift = shifts.filter((r) => r.psi !== null);
  if (shift.length) {
    parts.push(
      `<div class="muted">candidate vs live outputs (PSI, current window): ` +
        shift.map((r) => `v${esc(r.version)} vs v${esc(r.baseline)} ${esc(r.column)} ${num(r.psi, 3)}${r.drifted ? " ⚠" : ""}`).join(" · ") +
        `</div>`,
    );
  }
  $("distribution").innerHTML = parts.join("") || `<div class="empty-note">no predictions monitored yet</div>`;
}

function renderDrift(s) {
  const live = liveVersion(s);
  const entries = s.view;
  const version = live in entries ? live : Object.keys(entries)[0];
  const body = $("drift").querySelector("tbody");
  if (!version) {
    body.innerHTML = `<tr><td colspan="5" class="empty-note">no traffic monitored yet</td></tr>`;
    return;
  }
  const m = entries[version];
  const apart = (m.not_mergeable || []).length ? ` · not merged (another reference): ${m.not_mergeable.join(", ")}` : "";
  $("drift-version").textContent = `v${version}, current window vs reference${apart}`;
  const rows = [...m.drift.inputs.map((r) => ["input", r]), ...m.drift.outputs.map((r) => ["output", r])]
    .sort((a, b) => (b[1].psi || 0) - (a[1].psi || 0))
    .slice(0, 12);
  if (!rows.length) {
    const ref = m.reference || {};
    body.innerHTML = `<tr><td colspan="5" class="empty-note">reference ${esc(ref.state)}: ${ref.rows || 0} rows</td></tr>`;
    return;
  }
  body.innerHTML = rows
    .map(([kind, r]) => {
      const width = Math.min(120, (120 * (r.psi || 0)) / (2 * r.threshold));
      const over = r.drifted ? " over" : "";
      const note = r.drifted === null ? ' <span class="muted">(few rows)</span>' : "";
      return `<tr><td>${esc(r.column)} <span class="muted">${kind}</span></td><td>${num(r.psi, 3)}${note}</td>
        <td><span class="bar${over}" style="width:${width}px"></span></td><td>${num(r.js, 3)}</td><td>${r.samples}</td></tr>`;
    })
    .join("");
}

function renderTimeline(s) {
  const events = (s.rollout && s.rollout.events) || [];
  if (!events.length) {
    $("timeline").innerHTML = `<li class="empty-note">no rollout events</li>`;
    return;
  }
  const startedAt = events[0].time;
  $("timeline").innerHTML = events
    .slice(-30)
    .reverse()
    .map((e) => {
      const gates = (e.gates || [])
        .map((g) => {
          const observed = g.observed === null ? "–" : +Number(g.observed).toPrecision(4);
          const limit = g.threshold === null ? "–" : +Number(g.threshold).toPrecision(4);
          return `<span><span class="pill ${esc(g.verdict)}">${esc(g.verdict)}</span> ${esc(g.gate)}: ${observed} vs ${limit} (n=${g.samples})</span>`;
        })
        .join("");
      return `<li class="${esc(e.kind)}"><span class="when">+${num(e.time - startedAt, 1)} s</span><b>${esc(e.kind)}</b>
        · v${esc(e.candidate)} · ${esc(e.stage)} (${e.weight}%) <span class="muted">${esc(e.message)}</span>
        ${gates ? `<div class="gates">${gates}</div>` : ""}</li>`;
    })
    .join("");
}

function outputs(value) {
  if (!value || typeof value !== "object") return esc(JSON.stringify(value));
  return Object.entries(value)
    .map(([name, x]) => {
      const flat = [x].flat(Infinity).slice(0, 4).map((n) => (typeof n === "number" && !Number.isInteger(n) ? n.toFixed(3) : n));
      return `${esc(name)} <b>${esc(flat.join(", "))}</b>`;
    })
    .join(" · ");
}

function renderShadow(s) {
  const report = s.shadow;
  if (!report || !report.shadows || !report.shadows.length) {
    $("shadow").innerHTML = `<div class="empty-note">no shadow version</div>`;
    return;
  }
  const rows = report.shadows.map((x) => {
    const ci = x.agreement_interval && x.agreement_rate !== null ? ` (${pct(x.agreement_interval[0])}–${pct(x.agreement_interval[1])})` : "";
    const rec = x.recommendation ? esc(x.recommendation.verdict || x.recommendation.recommendation || "") : "";
    return `<tr><td>${swatch(x.shadow_version)}v${esc(x.shadow_version)}</td><td>${x.samples}</td><td>${pct(x.agreement_rate)}${ci}</td>
      <td>${x.errors}/${x.timeouts}/${x.dropped}</td><td>${rec}</td></tr>`;
  });
  const examples = report.shadows.flatMap((x) => (x.disagreements || []).map((d) => [x.shadow_version, d])).slice(0, 6);
  const disagreements = examples.length
    ? `<h3 style="margin-top:12px">Recent disagreements</h3><table><thead><tr><th>request</th><th>primary</th><th>shadow</th></tr></thead><tbody>` +
      examples
        .map(([v, d]) => `<tr><td>${esc(d.request_id || "–")}</td><td>v${esc(d.primary_version)}: ${outputs(d.primary)}</td><td>v${esc(v)}: ${outputs(d.shadow)}</td></tr>`)
        .join("") +
      `</tbody></table>`
    : "";
  const fleet = s.monitoring.fleet;
  const labelled = ((fleet && state.scope === "fleet" ? fleet.disagreements : s.monitoring.disagreements) || [])
    .map(
      (d) =>
        `<div class="who-right">On <b>${d.disagreeing_rows}</b> labelled rows where v${esc(d.primary_version)} and v${esc(d.shadow_version)} disagreed: ` +
        `${swatch(d.primary_version)}v${esc(d.primary_version)} right <b>${pct(d.primary_right_rate)}</b> · ` +
        `${swatch(d.shadow_version)}v${esc(d.shadow_version)} right <b>${pct(d.shadow_right_rate)}</b></div>`,
    )
    .join("");
  $("shadow").innerHTML =
    `<table><thead><tr><th>version</th><th>compared</th><th>agreement (CI)</th><th>err/timeout/drop</th><th>recommendation</th></tr></thead><tbody>${rows.join("")}</tbody></table>` +
    labelled +
    disagreements;
}

function renderExperiment(s) {
  const document_ = s.experiment;
  if (!document_) {
    $("experiment").innerHTML = `<div class="empty-note">no experiment</div>`;
    return;
  }
  const report = document_.report;
  const arms = (report.arms || [])
    .map((a) => `<tr><td>${swatch(a.arm)}v${esc(a.arm)}</td><td>${a.assigned}</td><td>${a.n}</td><td>${num(a.estimate, 4)}</td>
      <td>${a.interval ? `${num(a.interval.low, 4)} – ${num(a.interval.high, 4)}` : "–"}</td></tr>`)
    .join("");
  const comparisons = (report.comparisons || [])
    .map((c) => `<div>v${esc(c.arm)} vs v${esc(c.control)}: lift ${num(c.lift.absolute, 4)} [${num(c.lift.absolute_interval.low, 4)}, ${num(c.lift.absolute_interval.high, 4)}], p=${num(c.p_value, 4)} → <b>${esc(c.verdict)}</b></div>`)
    .join("");
  $("experiment").innerHTML =
    `<div class="muted">${esc(document_.experiment.id)} · ${esc(document_.experiment.state)} · metric ${esc(report.metric.name || "")} · verdict <b>${esc(report.verdict)}</b></div>` +
    `<table><thead><tr><th>arm</th><th>assigned</th><th>outcomes</th><th>estimate</th><th>95% interval</th></tr></thead><tbody>${arms}</tbody></table>${comparisons}`;
}

setUpSignIn();
setUpScope();
if (dropTokenFromUrl()) {
  showSignIn("a token in the address is not used (history and logs keep it): enter it here");
} else {
  begin();
}

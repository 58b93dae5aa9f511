// astreg page: polls the JSON API of the worker that served it and redraws without reloading.
// Every string from the API is untrusted (user agents, URIs, names): it only ever reaches the
// page through textContent / setAttribute, never innerHTML. The server sends a strict CSP.
"use strict";

const POLL_MS = 1500;
const HISTORY_POINTS = 400; // ~10 minutes at POLL_MS
const COLORS = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
const TOKEN_KEY = "astreg.token";

const state = {
  sort: "endpoint",
  order: "asc",
  cursors: [null], // cursor of each page visited; the last one is the current page
  next: null,
  history: [], // [{t, counts: {node: primary}}]
  detail: null,
  timer: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

// ---------------------------------------------------------------- token

function takeTokenFromUrl() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
}

async function api(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const resp = await fetch(path, { headers, cache: "no-store" });
  if (resp.status === 401) {
    $("token-form").hidden = false;
    throw new Error("token required");
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error || "HTTP " + resp.status);
  return body;
}

// ---------------------------------------------------------------- formatting

function fmtTime(ms) {
  if (ms === null || ms === undefined) return "";
  return new Date(ms).toLocaleString();
}

function fmtAge(ms, now) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  return s < 120 ? s + " s ago" : Math.round(s / 60) + " min ago";
}

function fmtRtt(us) {
  return us === null || us === undefined ? "" : (us / 1000).toFixed(1);
}

function fmtAddress(row) {
  if (!row.ip) return "";
  let out = row.ip.includes(":") ? "[" + row.ip + "]" : row.ip;
  if (row.port) out += ":" + row.port;
  if (row.transport) out += "/" + row.transport;
  return out;
}

// ---------------------------------------------------------------- endpoints

function listQuery() {
  const params = new URLSearchParams();
  for (const id of ["q", "node", "state", "device_state", "limit"]) {
    const value = $(id).value.trim();
    if (value) params.set(id, value);
  }
  params.set("sort", state.sort);
  params.set("order", state.order);
  const cursor = state.cursors[state.cursors.length - 1];
  if (cursor) params.set("cursor", cursor);
  return params;
}

function renderRows(page) {
  const body = $("rows");
  const rows = [];
  for (const item of page.items) {
    const tr = el("tr");
    tr.dataset.endpoint = item.endpoint;
    tr.append(
      el("td", item.endpoint),
      el("td", item.primary_node || "—"),
      el("td", fmtAddress(item)),
      el("td", item.status, "s-" + item.status),
      el("td", item.device_state),
      el("td", fmtRtt(item.rtt_us)),
      el("td", item.user_agent || "", "ua"),
      el("td", fmtTime(item.updated_at_ms)),
    );
    tr.addEventListener("click", () => showDetail(item.endpoint));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  const first = (state.cursors.length - 1) * page.limit;
  $("range").textContent = page.items.length
    ? `${first + 1}–${first + page.items.length} of ${page.total}`
    : `0 of ${page.total}`;
  state.next = page.next_cursor;
  $("next").disabled = !page.next_cursor;
  $("prev").disabled = state.cursors.length <= 1;
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.classList.toggle("asc", th.dataset.sort === state.sort && state.order === "asc");
    th.classList.toggle("desc", th.dataset.sort === state.sort && state.order === "desc");
  }
}

async function refreshEndpoints() {
  renderRows(await api("/api/v1/endpoints?" + listQuery().toString()));
}

async function showDetail(endpoint) {
  state.detail = endpoint;
  await refreshDetail();
}

async function refreshDetail() {
  if (!state.detail) return;
  const row = await api("/api/v1/endpoints/" + encodeURIComponent(state.detail)).catch(() => null);
  $("detail").hidden = false;
  if (!row) {
    $("detail-title").textContent = state.detail + " — not registered";
    $("detail-rows").replaceChildren();
    renderQuality(null);
    return;
  }
  $("detail-title").textContent =
    `${row.endpoint} — primary ${row.primary_node || "none"}, ${row.device_state}` + (row.stale ? " (stale copy)" : "");
  renderQuality(row.quality);
  $("detail-rows").replaceChildren(
    ...row.contacts.map((c) => {
      const tr = el("tr");
      tr.append(
        el("td", c.node), el("td", c.uri), el("td", fmtAddress(c)), el("td", c.status + (c.stale ? " (stale)" : "")),
        el("td", fmtRtt(c.rtt_us)), el("td", c.user_agent || "", "ua"), el("td", fmtTime(c.expires_at_ms)),
        el("td", c.primary ? "yes" : ""),
      );
      return tr;
    }),
  );
}

// ---------------------------------------------------------------- call quality

function fmtNum(v, digits, unit) {
  return v === null || v === undefined ? "–" : v.toFixed(digits) + unit;
}

function renderQuality(q) {
  const box = $("quality");
  if (!q) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const loss = (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %");
  $("quality-figures").textContent =
    `on ${q.node}, ${q.samples} RTCP reports in ${Math.round(q.window_ms / 1000)} s: ` +
    `jitter last ${fmtNum(q.jitter_last_ms, 1, " ms")}, mean ${fmtNum(q.jitter_mean_ms, 1, " ms")}, ` +
    `p95 ${fmtNum(q.jitter_p95_ms, 1, " ms")}; loss mean ${loss(q.loss_mean)}, p95 ${loss(q.loss_p95)}; ` +
    `RTT ${fmtNum(q.rtt_last_ms, 1, " ms")}; MES ${fmtNum(q.mes_last, 1, "")}`;
  const ns = "http://www.w3.org/2000/svg";
  const W = 600, H = 80, PAD = 3;
  const pts = (q.points || []).filter((p) => p.jitter_ms !== null);
  let max = 1;
  for (const p of pts) max = Math.max(max, p.jitter_ms);
  max = Math.ceil(max * 1.1);
  const t0 = pts.length ? pts[0].t : 0;
  const span = Math.max(1, (pts.length ? pts[pts.length - 1].t : 1) - t0);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts.map((p) => {
    const x = PAD + ((p.t - t0) / span) * (W - 2 * PAD);
    const y = H - PAD - (p.jitter_ms / max) * (H - 2 * PAD);
    return x.toFixed(1) + "," + y.toFixed(1);
  }).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", COLORS[0]);
  line.setAttribute("stroke-width", "2");
  line.setAttribute("vector-effect", "non-scaling-stroke");
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "6");
  label.setAttribute("y", "12");
  label.setAttribute("font-size", "11");
  label.textContent = max + " ms";
  $("quality-chart").replaceChildren(line, label);
}

// ---------------------------------------------------------------- nodes and chart

function renderNodes(data) {
  const now = data.now_ms;
  const cards = data.nodes.map((n) => {
    const card = el("div", null, "node " + String(n.state || "unknown").toLowerCase());
    card.dataset.node = n.node;
    const dl = el("dl");
    const add = (k, v) => dl.append(el("dt", k), el("dd", v));
    add("state", n.state || "unknown");
    add("AMI", n.ami_link || n.ami || "?");
    add("last heard", n.seen_ms_ago === undefined || n.seen_ms_ago === null ? "never" : fmtAge(now - n.seen_ms_ago, now));
    add("Asterisk", n.asterisk_version || "?");
    add("registered", n.table.primary);
    add("contacts", n.table.contacts + (n.table.stale ? ` (${n.table.stale} stale)` : ""));
    add("snapshot", fmtAge(n.last_snapshot_at_ms, now));
    card.append(el("div", n.node, "name"), dl);
    return card;
  });
  $("nodes").replaceChildren(...cards);

  const select = $("node");
  const chosen = select.value;
  const names = data.nodes.map((n) => n.node);
  const current = Array.from(select.options).slice(1).map((o) => o.value);
  if (names.join("\n") !== current.join("\n")) {
    const options = [el("option", "all nodes")];
    options[0].value = "";
    for (const name of names) {
      const o = el("option", name);
      o.value = name;
      options.push(o);
    }
    select.replaceChildren(...options);
    select.value = names.includes(chosen) ? chosen : "";
  }

  const counts = {};
  for (const n of data.nodes) counts[n.node] = n.table.primary;
  state.history.push({ t: now, counts });
  if (state.history.length > HISTORY_POINTS) state.history.shift();
  drawChart(names);
}

function drawChart(names) {
  const svg = $("chart");
  const ns = "http://www.w3.org/2000/svg";
  const W = 600, H = 160, PAD = 4;
  const points = state.history;
  let max = 1;
  for (const p of points) for (const v of Object.values(p.counts)) max = Math.max(max, v);
  max = Math.ceil(max * 1.1); // headroom: a flat line should not sit on the frame
  const t0 = points.length ? points[0].t : 0;
  const span = Math.max(1, (points.length ? points[points.length - 1].t : 1) - t0);
  const lines = [];
  const legend = [];
  names.forEach((name, i) => {
    const color = COLORS[i % COLORS.length];
    const coords = points
      .filter((p) => name in p.counts)
      .map((p) => {
        const x = PAD + ((p.t - t0) / span) * (W - 2 * PAD);
        const y = H - PAD - (p.counts[name] / max) * (H - 2 * PAD);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", coords.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    lines.push(line);
    const item = el("span");
    const swatch = el("i");
    swatch.style.background = color; // CSSOM property, not a style attribute: allowed by the CSP
    const last = points.length ? points[points.length - 1].counts[name] : undefined;
    item.append(swatch, document.createTextNode(`${name}: ${last ?? 0}`));
    legend.push(item);
  });
  const maxLabel = document.createElementNS(ns, "text");
  maxLabel.setAttribute("x", "6");
  maxLabel.setAttribute("y", "14");
  maxLabel.setAttribute("font-size", "11");
  maxLabel.textContent = String(max);
  svg.replaceChildren(...lines, maxLabel);
  $("chart-legend").replaceChildren(...legend);
}

// ---------------------------------------------------------------- loop

async function tick() {
  const status = $("status");
  try {
    const [nodes] = await Promise.all([api("/api/v1/nodes"), refreshEndpoints()]);
    renderNodes(nodes);
    await refreshDetail();
    status.textContent = "live · updated " + new Date().toLocaleTimeString();
    status.classList.remove("error");
  } catch (err) {
    status.textContent = "not updated: " + err.message + " (retrying)";
    status.classList.add("error");
  } finally {
    state.timer = setTimeout(tick, POLL_MS);
  }
}

function restartFromFirstPage() {
  state.cursors = [null];
  refreshEndpoints().catch((err) => {
    $("status").textContent = "not updated: " + err.message;
  });
}

function init() {
  takeTokenFromUrl();
  let searchTimer = null;
  $("q").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(restartFromFirstPage, 250);
  });
  for (const id of ["node", "state", "device_state", "limit"]) $(id).addEventListener("change", restartFromFirstPage);
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    restartFromFirstPage();
  });
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.addEventListener("click", () => {
      if (state.sort === th.dataset.sort) state.order = state.order === "asc" ? "desc" : "asc";
      else { state.sort = th.dataset.sort; state.order = "asc"; }
      restartFromFirstPage();
    });
  }
  $("next").addEventListener("click", () => {
    if (!state.next) return;
    state.cursors.push(state.next);
    refreshEndpoints().catch(() => {});
  });
  $("prev").addEventListener("click", () => {
    if (state.cursors.length > 1) state.cursors.pop();
    refreshEndpoints().catch(() => {});
  });
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value);
    $("token-form").hidden = true;
  });
  tick();
}

document.addEventListener("DOMContentLoaded", init);

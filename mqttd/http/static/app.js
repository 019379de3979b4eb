// The mqttd dashboard: plain JavaScript over the REST API (/api/v1/), no build step and
// nothing fetched from elsewhere. Every second it reads the counters and the open tab;
// the charts are drawn on <canvas> here. docs/HTTP.md describes every call it makes.
"use strict";

const API = "/api/v1";
const KEY = "mqttd.apikey";
const HISTORY = 60;        // seconds of rates the charts show
const PAGE = 100;          // rows a table shows (the API pages by cursor beyond that)

const $ = (id) => document.getElementById(id);
const state = {
  tab: "clients",
  prev: null,              // {t, metrics} of the previous poll, for rates
  series: {received: [], sent: [], connects: [], disconnects: []},
  timer: null,
  trace: null,             // AbortController of the running trace stream
};

class Unauthorized extends Error {}

// --- the API --------------------------------------------------------------------------------

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? {"Authorization": "Bearer " + key} : {};
}

async function api(path, options = {}) {
  const resp = await fetch(API + path, {...options, headers: {...headers(), ...(options.headers || {})}});
  if (resp.status === 401) throw new Unauthorized((await errorOf(resp)) || "unauthorized");
  if (!resp.ok) throw new Error(`${options.method || "GET"} ${path}: ${resp.status} ${await errorOf(resp)}`);
  return resp.json();
}

async function errorOf(resp) {
  try { const e = await resp.json(); return e.message || e.code; } catch (_) { return resp.statusText; }
}

// --- logging in -------------------------------------------------------------------------------

function showLogin(message) {
  stopPolling();
  $("main").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  $("conn-state").textContent = "not signed in";
  $("login-error").textContent = message || "";
  $("login-key").focus();
}

async function start() {
  try {
    await api("/status");
  } catch (e) {
    if (e instanceof Unauthorized) {
      // a key that was refused is not kept
      const tried = sessionStorage.getItem(KEY);
      sessionStorage.removeItem(KEY);
      showLogin(tried ? e.message : "");
      return;
    }
    $("conn-state").textContent = "cannot reach the API: " + e.message;
    setTimeout(start, 2000);
    return;
  }
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = !sessionStorage.getItem(KEY);
  startPolling();
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("login-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  $("login-key").value = "";
  start();
});

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  stopTrace();
  showLogin("");
});

// --- polling ----------------------------------------------------------------------------------

function startPolling() {
  stopPolling();
  poll();
  state.timer = setInterval(poll, 1000);
}

function stopPolling() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

let polling = false;
async function poll() {
  if (polling) return;     // a slow answer: skip a beat rather than pile requests up
  polling = true;
  try {
    const [status, stats, metrics] = await Promise.all([api("/status"), api("/stats"), api("/metrics")]);
    showStatus(status, stats.stats);
    addRates(metrics.metrics, stats.stats);
    await refreshTab();
    $("conn-state").textContent = "live";
    $("error").textContent = "";
  } catch (e) {
    if (e instanceof Unauthorized) { sessionStorage.removeItem(KEY); showLogin(e.message); }
    else { $("error").textContent = e.message; $("conn-state").textContent = "error"; }
  } finally {
    polling = false;
  }
}

function showStatus(status, stats) {
  $("node-name").textContent = `${status.node} · ${status.version}`;
  const items = [
    ["status", status.status], ["uptime", status.uptime], ["loop", status.loop],
    ["connections", stats["connections.count"]], ["sessions", stats["sessions.count"]],
    ["subscriptions", stats["subscriptions.count"]], ["topics", stats["topics.count"]],
    ["retained", stats["retained.count"]],
  ];
  const dl = $("status-list");
  dl.replaceChildren(...items.map(([k, v]) => {
    const div = document.createElement("div");
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v === undefined ? "–" : String(v);
    div.append(dt, dd);
    return div;
  }));
  $("connections-count").textContent = String(stats["connections.count"] ?? "–");
}

function addRates(metrics, stats) {
  const now = performance.now() / 1000;
  const prev = state.prev;
  state.prev = {t: now, metrics};
  if (!prev) return;
  const dt = Math.max(now - prev.t, 0.001);
  const rate = (name) => Math.max(0, ((metrics[name] || 0) - (prev.metrics[name] || 0)) / dt);
  const values = {received: rate("messages.received"), sent: rate("messages.sent"),
                  connects: rate("client.connected"), disconnects: rate("client.disconnected")};
  for (const [name, v] of Object.entries(values)) {
    const s = state.series[name];
    s.push(v);
    if (s.length > HISTORY) s.shift();
    $("rate-" + name).textContent = v.toFixed(1);
  }
  drawChart($("chart-messages"), [["received", "#1f6feb"], ["sent", "#2da44e"]]);
  drawChart($("chart-connections"), [["connects", "#8250df"], ["disconnects", "#cf222e"]]);
}

// --- charts: lines of the last HISTORY seconds, drawn by hand ---------------------------------

function drawChart(canvas, lines) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  if (canvas.width !== w * ratio) { canvas.width = w * ratio; canvas.height = h * ratio; }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const left = 48, right = 8, top = 8, bottom = 20;
  const pw = w - left - right, ph = h - top - bottom;
  let max = 1;
  for (const [name] of lines) for (const v of state.series[name]) max = Math.max(max, v);
  max = niceCeil(max);
  // grid and labels
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#667"; ctx.strokeStyle = "#e4e6eb"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + ph - (ph * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, y + 0.5); ctx.lineTo(left + pw, y + 0.5); ctx.stroke();
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    ctx.fillText(shortNumber((max * i) / 4), left - 6, y);
  }
  ctx.textAlign = "left"; ctx.textBaseline = "top";
  ctx.fillText(`-${HISTORY}s`, left, top + ph + 4);
  ctx.textAlign = "right";
  ctx.fillText("now", left + pw, top + ph + 4);
  // one line per series, newest at the right
  lines.forEach(([name, colour], i) => {
    const s = state.series[name];
    ctx.strokeStyle = colour; ctx.lineWidth = 2; ctx.beginPath();
    s.forEach((v, j) => {
      const x = left + pw - ((s.length - 1 - j) * pw) / (HISTORY - 1);
      const y = top + ph - (v / max) * ph;
      if (j === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = colour; ctx.textAlign = "left";
    ctx.fillText(name, left + 8 + i * 90, top);
  });
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function shortNumber(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(v % 1e6 ? 1 : 0) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(v % 1e3 ? 1 : 0) + "k";
  return String(Math.round(v * 10) / 10);
}

// --- tables -----------------------------------------------------------------------------------

document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => {
  state.tab = b.dataset.tab;
  document.querySelectorAll("#tabs button").forEach((o) => o.classList.toggle("active", o === b));
  document.querySelectorAll(".tab").forEach((t) => { t.hidden = t.id !== "tab-" + state.tab; });
  refreshTab().catch((e) => { $("error").textContent = e.message; });
}));

$("client-search").addEventListener("input", () => {
  refreshTab().catch((e) => { $("error").textContent = e.message; });
});

const TABS = {
  clients: {
    path: () => {
      const prefix = $("client-search").value.trim();
      return `/clients?limit=${PAGE}` + (prefix ? "&clientid_prefix=" + encodeURIComponent(prefix) : "");
    },
    columns: ["clientid", "username", "peername", "listener", "proto_ver", "connected_at",
              "subscriptions", "inflight", "mqueue_len", "recv_msg", "send_msg"],
    action: ["Kick", "kick", kick],
  },
  subscriptions: {path: () => `/subscriptions?limit=${PAGE}`,
                  columns: ["clientid", "topic", "qos", "no_local", "retain_as_published", "retain_handling", "subid"]},
  topics: {path: () => `/topics?limit=${PAGE}`, columns: ["topic", "subscribers", "node"]},
  retained: {path: () => `/retained?limit=${PAGE}`,
             columns: ["topic", "qos", "payload_size", "from", "stored_at", "expires_in"]},
};

async function refreshTab() {
  const tab = TABS[state.tab];
  if (!tab) return;        // the trace tab streams on its own
  const rows = await api(tab.path());
  renderTable($(state.tab + "-table"), rows, tab.columns, tab.action);
  if (state.tab === "clients") {
    $("clients-count").textContent = rows.length >= PAGE ? `first ${PAGE} shown` : `${rows.length} shown`;
  }
}

function renderTable(table, rows, wanted, action) {
  // the columns the rows have, in the order wanted
  const columns = wanted.filter((c) => rows.some((r) => c in r));
  const head = document.createElement("tr");
  for (const c of columns) { const th = document.createElement("th"); th.textContent = c; head.append(th); }
  if (action) head.append(document.createElement("th"));
  const body = rows.map((r) => {
    const tr = document.createElement("tr");
    for (const c of columns) {
      const td = document.createElement("td");
      const v = r[c];
      td.textContent = v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
      tr.append(td);
    }
    if (action) {
      const [label, cls, fn] = action;
      const td = document.createElement("td");
      const b = document.createElement("button");
      b.textContent = label; b.className = cls; b.dataset.clientid = r.clientid;
      b.addEventListener("click", () => fn(r, b));
      td.append(b); tr.append(td);
    }
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement("tr"); const td = document.createElement("td");
    td.className = "muted"; td.textContent = "none"; tr.append(td); body.push(tr);
  }
  table.replaceChildren(head, ...body);
}

async function kick(row, button) {
  button.disabled = true;
  try {
    await api("/clients/" + encodeURIComponent(row.clientid), {method: "DELETE"});
    $("error").textContent = "";
    await refreshTab();
  } catch (e) {
    button.disabled = false;
    $("error").textContent = e.message;
  }
}

// --- live trace: server-sent events read with fetch (EventSource cannot send a key) ------------

$("trace-form").addEventListener("submit", (ev) => { ev.preventDefault(); startTrace($("trace-client").value.trim()); });
$("trace-stop").addEventListener("click", stopTrace);

function stopTrace() {
  if (state.trace) state.trace.abort();
  state.trace = null;
  $("trace-start").disabled = false;
  $("trace-stop").disabled = true;
}

async function startTrace(clientid) {
  if (!clientid) return;
  stopTrace();
  const log = $("trace-log");
  log.textContent = "";
  const ctrl = new AbortController();
  state.trace = ctrl;
  $("trace-start").disabled = true;
  $("trace-stop").disabled = false;
  $("trace-state").textContent = "starting…";
  try {
    const resp = await fetch(`${API}/trace/clients/${encodeURIComponent(clientid)}/stream`,
                             {headers: headers(), signal: ctrl.signal});
    if (!resp.ok) throw new Error(`${resp.status} ${await errorOf(resp)}`);
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      let at;
      while ((at = buffer.indexOf("\n\n")) >= 0) {
        onEvent(buffer.slice(0, at), clientid);
        buffer = buffer.slice(at + 2);
      }
    }
    if (state.trace === ctrl) $("trace-state").textContent = "ended";
  } catch (e) {
    if (e.name !== "AbortError") $("trace-state").textContent = "error: " + e.message;
    else $("trace-state").textContent = "stopped";
  } finally {
    if (state.trace === ctrl) stopTrace();
  }
}

function onEvent(block, clientid) {
  let name = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) name = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (!data) return;       // a keep-alive comment
  const ev = JSON.parse(data);
  if (name === "start") {
    $("trace-state").textContent = ev.connected !== null
      ? `tracing ${clientid} (connected from ${ev.connected})`
      : `tracing ${clientid} (not connected: tracing starts when it connects)`;
  } else if (name === "trace") {
    appendTrace(`${ev.ts} ${ev.dir} ${ev.text}`);
  } else if (name === "dropped") {
    appendTrace(`[${ev.message}]`);
  } else if (name === "end") {
    appendTrace(`[${ev.reason || "trace ended"}]`);
  }
}

function appendTrace(line) {
  const log = $("trace-log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(line + "\n");
  // keep the last 2000 lines: a long trace must not grow the page without end
  while (log.childNodes.length > 2000) log.firstChild.remove();
  if (atEnd) log.scrollTop = log.scrollHeight;
}

start();

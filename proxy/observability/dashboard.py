"""The dashboard page served at `/`: one self-contained HTML document (inline CSS and JS).

It polls `/api/summary` every 2 s and shows per-tenant rows (connections, queries/s, p95,
refusals), pool use, and a timeline of recent security events. Everything that comes from
the proxy is inserted as text (`textContent`), never as HTML: tenant names and statement
shapes are attacker-chosen. Kept in a .py file so it ships with the package.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tenantgate</title>
<style>
  :root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --dim:#6b7385; --line:#e3e6ec;
          --bad:#c62828; --warn:#b26a00; --ok:#2e7d32; --bar:#3f6fd8; }
  * { box-sizing:border-box; }
  body { margin:0; background:var(--bg); color:var(--ink);
         font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; }
  header { display:flex; align-items:center; gap:16px; padding:12px 20px;
           background:#1d2330; color:#fff; }
  header h1 { font-size:18px; margin:0; font-weight:600; letter-spacing:.3px; }
  #status { display:flex; align-items:center; gap:6px; font-size:13px; color:#cfd5e2; }
  #dot { width:10px; height:10px; border-radius:50%; background:#888; }
  #dot.up { background:#4caf50; } #dot.down { background:#e53935; }
  main { padding:16px 20px; display:grid; gap:16px;
         grid-template-columns:repeat(auto-fit,minmax(420px,1fr)); }
  .tiles { grid-column:1/-1; display:grid; gap:12px;
           grid-template-columns:repeat(auto-fit,minmax(150px,1fr)); }
  .tile, section { background:var(--card); border:1px solid var(--line); border-radius:8px; }
  .tile { padding:10px 14px; }
  .tile .v { font-size:24px; font-weight:600; font-variant-numeric:tabular-nums; }
  .tile .k { color:var(--dim); font-size:12px; text-transform:uppercase; letter-spacing:.5px; }
  section { padding:12px 14px; overflow:auto; }
  section.wide { grid-column:1/-1; }
  h2 { font-size:14px; margin:0 0 8px; color:var(--dim); text-transform:uppercase;
       letter-spacing:.5px; }
  table { width:100%; border-collapse:collapse; font-variant-numeric:tabular-nums; }
  th, td { padding:5px 8px; border-bottom:1px solid var(--line); text-align:right;
           white-space:nowrap; }
  th:first-child, td:first-child { text-align:left; }
  th { font-size:12px; color:var(--dim); font-weight:600; }
  td.bad { color:var(--bad); font-weight:600; }
  .bar { display:inline-block; width:90px; height:8px; background:var(--line);
         border-radius:4px; vertical-align:middle; margin-right:6px; overflow:hidden; }
  .bar i { display:block; height:100%; background:var(--bar); }
  .bar i.full { background:var(--bad); }
  .empty { color:var(--dim); font-style:italic; padding:6px 0; }
  ol#events { list-style:none; margin:0; padding:0; }
  ol#events li { display:grid; grid-template-columns:80px 130px 110px 1fr; gap:8px;
                 padding:6px 0; border-bottom:1px solid var(--line); align-items:baseline; }
  .kind { font-size:11px; font-weight:700; text-transform:uppercase; border-radius:4px;
          padding:1px 6px; color:#fff; background:var(--bad); justify-self:start;
          white-space:nowrap; }
  .kind.login_refused { background:var(--warn); }
  .time { color:var(--dim); font-variant-numeric:tabular-nums; }
  .shape { font-family:ui-monospace,Menlo,Consolas,monospace; font-size:12px;
           color:#3a4150; white-space:pre-wrap; word-break:break-all; }
  .rule { font-weight:600; }
</style>
</head>
<body>
<header>
  <h1>tenantgate</h1>
  <div id="status"><span id="dot"></span><span id="status-text">connecting…</span></div>
</header>
<main>
  <div class="tiles">
    <div class="tile"><div class="v" id="t-tenants">–</div><div class="k">tenants</div></div>
    <div class="tile"><div class="v" id="t-conns">–</div><div class="k">client connections</div></div>
    <div class="tile"><div class="v" id="t-qps">–</div><div class="k">queries / s</div></div>
    <div class="tile"><div class="v" id="t-refusals">–</div><div class="k">refusals</div></div>
    <div class="tile"><div class="v" id="t-cache">–</div><div class="k">analysis cache hits</div></div>
    <div class="tile"><div class="v" id="t-audit">–</div><div class="k">audit queue / dropped</div></div>
  </div>
  <section class="wide">
    <h2>Tenants</h2>
    <table id="tenants"><thead><tr><th>tenant</th><th>connections</th><th>queries/s</th>
      <th>p95 ms</th><th>transactions</th><th>errors</th><th>refusals</th></tr></thead>
      <tbody></tbody></table>
  </section>
  <section>
    <h2>Pools</h2>
    <table id="pools"><thead><tr><th>cluster / database</th><th>in use</th><th>active</th>
      <th>idle</th><th>waiting</th></tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>Recent security events</h2>
    <ol id="events"></ol>
  </section>
</main>
<script>
"use strict";
const POLL_MS = 2000;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function fmt(n, digits) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString(undefined, {maximumFractionDigits: digits || 0});
}
function setText(id, text) { document.getElementById(id).textContent = text; }
function fill(tbody, rows, columns, emptyText) {
  tbody.replaceChildren();
  if (!rows.length) {
    const tr = el("tr"); const td = el("td", emptyText, "empty");
    td.colSpan = columns; tr.appendChild(td); tbody.appendChild(tr);
  }
  for (const row of rows) tbody.appendChild(row);
}

function tenantRow(t) {
  const tr = el("tr");
  tr.dataset.tenant = t.tenant;
  tr.appendChild(el("td", t.tenant));
  tr.appendChild(el("td", fmt(t.connections)));
  tr.appendChild(el("td", fmt(t.queries_per_second, 1)));
  tr.appendChild(el("td", fmt(t.p95_ms, 2)));
  tr.appendChild(el("td", fmt(t.transactions)));
  tr.appendChild(el("td", fmt(t.errors), t.errors ? "bad" : ""));
  tr.appendChild(el("td", fmt(t.refusals), t.refusals ? "bad" : ""));
  return tr;
}

function poolRow(p) {
  const tr = el("tr");
  tr.dataset.pool = p.cluster + "/" + p.database;
  tr.appendChild(el("td", p.cluster + " / " + p.database));
  const use = el("td");
  const bar = el("span", null, "bar");
  const fillBar = el("i", null, p.max && p.active >= p.max ? "full" : "");
  fillBar.style.width = (p.max ? Math.min(100, 100 * p.active / p.max) : 0) + "%";
  bar.appendChild(fillBar);
  use.appendChild(bar);
  use.appendChild(document.createTextNode(p.active + " / " + p.max));
  tr.appendChild(use);
  tr.appendChild(el("td", fmt(p.active)));
  tr.appendChild(el("td", fmt(p.idle)));
  tr.appendChild(el("td", fmt(p.waiting), p.waiting ? "bad" : ""));
  return tr;
}

function eventItem(e) {
  const li = el("li", null, "event");
  li.dataset.kind = e.kind;
  const time = (e.time || "").replace("T", " ").replace(/\.\d+Z$/, "");
  li.appendChild(el("span", time.slice(11) || time, "time"));
  li.appendChild(el("span", e.kind.replace("_", " "), "kind " + e.kind));
  li.appendChild(el("span", e.tenant === null ? "(no tenant)" : e.tenant));
  const what = el("span");
  what.appendChild(el("span", e.rule, "rule"));
  if (e.sqlstate) what.appendChild(document.createTextNode(" " + e.sqlstate));
  if (e.login) what.appendChild(document.createTextNode(" login " + e.login));
  if (e.shape) { what.appendChild(el("br")); what.appendChild(el("span", e.shape, "shape")); }
  li.appendChild(what);
  return li;
}

function render(s) {
  const tenants = s.tenants || [];
  const sum = (key) => tenants.reduce((acc, t) => acc + (t[key] || 0), 0);
  setText("t-tenants", fmt(tenants.length));
  setText("t-conns", fmt(sum("connections")));
  setText("t-qps", fmt(sum("queries_per_second"), 1));
  setText("t-refusals", fmt(sum("refusals")));
  setText("t-cache", s.cache && s.cache.hit_ratio !== null
          ? fmt(100 * s.cache.hit_ratio, 1) + " %" : "–");
  setText("t-audit", s.audit ? fmt(s.audit.queue_depth) + " / " + fmt(s.audit.dropped) : "off");
  if (s.audit && s.audit.dropped) document.getElementById("t-audit").style.color = "#c62828";
  const sorted = tenants.slice().sort((a, b) =>
      (b.connections - a.connections) || a.tenant.localeCompare(b.tenant));
  fill(document.querySelector("#tenants tbody"), sorted.map(tenantRow), 7, "no tenant yet");
  fill(document.querySelector("#pools tbody"), (s.pools || []).map(poolRow), 5,
       "no pool opened yet");
  const events = document.getElementById("events");
  events.replaceChildren(...(s.events || []).map(eventItem));
  if (!events.children.length) events.appendChild(el("li", "no security event", "empty"));
}

async function poll() {
  try {
    const response = await fetch("api/summary", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const summary = await response.json();
    render(summary);
    document.getElementById("dot").className = "up";
    setText("status-text", "live · up " + Math.round(summary.uptime_seconds) + " s · " +
            new Date().toLocaleTimeString());
  } catch (err) {
    document.getElementById("dot").className = "down";
    setText("status-text", "disconnected (" + err.message + ")");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
poll();
</script>
</body>
</html>
"""

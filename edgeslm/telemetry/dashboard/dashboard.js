// edgeslm fleet dashboard: polls /api/fleet every 2 s. Device text is only ever set with
// textContent (never innerHTML): a device cannot put markup or script into this page.
"use strict";
let selected = null;
let refreshes = 0;
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fmt(v, digits, scale, unit) {
  if (v === null || v === undefined) return "–";
  return (v * (scale || 1)).toFixed(digits) + (unit || "");
}

function renderDevices(devices) {
  const body = $("devices").tBodies[0];
  body.replaceChildren();
  for (const d of devices) {
    const tr = el("tr");
    tr.dataset.device = d.device;
    tr.dataset.fleet = d.fleet;
    if (selected && selected.device === d.device && selected.fleet === d.fleet) tr.classList.add("selected");
    const cells = [d.device, d.state, d.model_id, fmt(d.ttft_p95_s, 0, 1000, " ms"), fmt(d.tok_s_p50, 1),
                   d.requests, d.errors, fmt(d.cpu, 0, 100, " %"), fmt(d.temperature, 1), d.last_seq];
    cells.forEach((c, i) => tr.appendChild(el("td", c, i === 1 ? String(d.state).split(" ")[0] : "")));  // state class
    tr.addEventListener("click", () => { selected = {device: d.device, fleet: d.fleet}; loadDevice(); });
    body.appendChild(tr);
  }
}

function renderAlerts(alerts) {
  const ul = $("alerts");
  ul.replaceChildren();
  if (!alerts.length) ul.appendChild(el("li", "none firing", "muted"));
  for (const a of alerts) ul.appendChild(el("li", `[${a.severity}] ${a.device}: ${a.message}`));
}

function renderRollouts(rollouts) {
  const box = $("rollouts");
  box.replaceChildren();
  if (!rollouts.length) box.appendChild(el("p", "none", "muted"));
  for (const r of rollouts) {
    const div = el("div", null, "rollout");
    div.dataset.rollout = r.id;
    div.appendChild(el("div", `${r.id} · ${r.bundle} · ${r.state} · stage ${r.stage + 1}/${r.stages} · ${r.detail}`));
    const total = Object.values(r.devices).reduce((a, b) => a + b, 0) || 1;
    const bar = el("div", null, "bar");
    for (const [state, n] of Object.entries(r.devices)) {
      const known = ["succeeded", "failed", "refused", "timeout", "rolled_back", "pending", "cancelled"];
      const seg = el("span", null, "s-" + (known.includes(state) ? state : "progress"));
      seg.style.width = (100 * n / total) + "%";
      seg.title = `${state}: ${n}`;
      bar.appendChild(seg);
    }
    div.appendChild(bar);
    box.appendChild(div);
  }
}

function renderEvents(events) {
  const ul = $("events");
  ul.replaceChildren();
  for (const e of events) {
    const t = new Date(e.ts * 1000).toLocaleTimeString();
    ul.appendChild(el("li", `${t} ${e.device} ${e.name}: ${e.message}`));
  }
}

function chart(svg, values, scale) {
  svg.replaceChildren();
  const pts = values.map((v, i) => [i, v === null || v === undefined ? null : v * (scale || 1)]).filter(p => p[1] !== null);
  if (pts.length < 2) { const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
    t.setAttribute("x", 10); t.setAttribute("y", 60); t.textContent = "not enough data"; svg.appendChild(t); return; }
  const ys = pts.map(p => p[1]);
  const lo = Math.min(...ys), hi = Math.max(...ys), n = values.length - 1 || 1;
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", pts.map(([i, y]) =>
    `${(10 + 300 * i / n).toFixed(1)},${(110 - 95 * (hi > lo ? (y - lo) / (hi - lo) : 0.5)).toFixed(1)}`).join(" "));
  svg.appendChild(line);
  for (const [y, v] of [[12, hi], [112, lo]]) {
    const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
    t.setAttribute("x", 2); t.setAttribute("y", y); t.textContent = v.toFixed(1); svg.appendChild(t);
  }
}

async function loadDevice() {
  if (!selected) return;
  const q = new URLSearchParams(selected).toString();
  const resp = await fetch("api/device?" + q, {cache: "no-store"});
  if (!resp.ok) return;
  const data = await resp.json();
  $("device-box").hidden = false;
  $("device-name").textContent = data.device;
  const h = data.history;
  chart($("chart-ttft"), h.map(r => r.ttft_p95_s), 1000);
  chart($("chart-toks"), h.map(r => r.tok_s_p50));
  chart($("chart-temp"), h.map(r => r.temperature));
  chart($("chart-cpu"), h.map(r => r.cpu), 100);
}

async function refresh() {
  try {
    const resp = await fetch("api/fleet", {cache: "no-store"});
    if (!resp.ok) throw new Error(await resp.text());
    const data = await resp.json();
    $("fleet-name").textContent = data.fleet || "(all fleets)";
    $("n-devices").textContent = data.devices.length;
    $("n-online").textContent = data.devices.filter(d => d.online).length;
    $("rate").textContent = data.collector.rate;
    $("received").textContent = data.collector.received;
    $("dead").textContent = data.collector.dead_letters;
    renderDevices(data.devices);
    renderAlerts(data.alerts);
    renderRollouts(data.rollouts);
    renderEvents(data.events);
    if (selected) await loadDevice();
    refreshes += 1;
    $("refreshes").textContent = refreshes;
    $("updated").textContent = new Date(data.now * 1000).toLocaleTimeString();
  } catch (err) {
    $("updated").textContent = "error: " + err.message;
  }
}

refresh();
setInterval(refresh, 2000);

// The dashboard page: polls /api/overview every 2 s and draws it. Read-only.
// Traffic charts are the whole cluster's (every node's proxy); usage is per task, every node's.
// Everything from the server goes in with textContent (never innerHTML).
"use strict";
const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
let timer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function fill(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
}

function chart(points, keys, label) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart " + keys.join(" "));
  svg.setAttribute("viewBox", "0 0 160 32");
  const top = Math.max(keys[0] === "latency" ? 0.001 : 1, ...points.map(p => Math.max(...keys.map(k => p[k]))));
  for (const key of keys) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", key);
    const step = points.length > 1 ? 160 / (points.length - 1) : 0;
    line.setAttribute("points", points.map((p, i) => `${(i * step).toFixed(1)},${(31 - 30 * p[key] / top).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  const title = document.createElementNS(SVG, "title");
  title.textContent = label;
  svg.append(title);
  return svg;
}

function trafficCell(points) {
  const last = points[points.length - 1] || {rate: 0, errors: 0, latency: 0};
  const ms = (last.latency * 1000).toFixed(1);
  return el("td", {class: "traffic"},
    chart(points, ["rate", "errors"], `${last.rate} req/s, ${last.errors} err/s`),
    chart(points, ["latency"], `${ms} ms mean`),
    el("span", {class: "figures"}, `${last.rate.toFixed(1)} req/s, ${last.errors.toFixed(1)} err/s, ${ms} ms`));
}

function mib(bytes) {
  return `${(Number(bytes) / 1048576).toFixed(1)} MiB`;
}

function ago(t) {
  return new Date(t * 1000).toLocaleTimeString();
}

function draw(data) {
  document.getElementById("who").textContent =
    `node ${data.answered_by}, leader ${data.leader || "none"}; token ${data.viewer.token} (${data.viewer.role})`;
  fill("nodes", data.nodes.map(n => {
    const row = el("tr", {"data-node": n.id},
      el("td", {}, n.id), el("td", {}, `${n.address}:${n.grpc_port}`),
      el("td", {class: n.status === "ready" ? "good" : "bad"}, n.status),
      el("td", {class: "gossip"}, n.member_state || "?"),
      el("td", {class: "leader"}, n.leader ? "leader" : ""), el("td", {}, n.tasks), el("td", {}, n.version));
    return row;
  }));
  const traffic = data.traffic.services || {};
  fill("services", data.services.map(s => {
    const r = s.rollout;
    const rollout = r ? `${r.state} ${r.updated}/${r.total} (v${r.from_version}→v${r.to_version})${r.message ? ": " + r.message : ""}` : "";
    const pending = s.pending ? `${s.pending}: ${s.pending_reason}` : "";
    return el("tr", {"data-service": s.name},
      el("td", {}, s.name), el("td", {}, s.image),
      el("td", {class: "replicas " + (s.running === s.replicas ? "good" : "warn")}, `${s.running}/${s.replicas}`),
      el("td", {}, `v${s.version}`), el("td", {class: "rollout"}, rollout),
      el("td", {class: "pending " + (pending ? "bad" : "")}, pending),
      trafficCell(traffic[s.name] || []));
  }));
  const notices = [...(data.traffic.notices || []), ...(data.usage_notices || [])];
  document.getElementById("notices").textContent = notices.join("; ");
  const usage = new Map((data.usage || []).map(u => [u.task_id, u]));
  fill("tasks", data.tasks.map(t => {
    const u = usage.get(t.task_id);
    return el("tr", {"data-task": t.task_id},
      el("td", {}, `${t.service}.${t.slot}`), el("td", {}, t.task_id.slice(0, 12)), el("td", {}, t.node),
      el("td", {class: t.state === "running" ? "good" : "warn"}, t.state), el("td", {}, t.health),
      el("td", {class: "cpu"}, u ? `${u.cpu_percent.toFixed(1)}%` : ""),
      el("td", {class: "memory"}, u ? `${mib(u.memory_bytes)} / ${mib(u.memory_limit)}` : ""),
      el("td", {}, t.restarts), el("td", {}, t.message));
  }));
  document.getElementById("events").replaceChildren(...data.events.map(e =>
    el("li", {}, `${ago(e.time)} ${e.kind} ${e.node} ${e.service} ${e.message}`)));
  const select = document.getElementById("log-service");
  const names = data.services.map(s => s.name);
  if (select.dataset.names !== names.join(",")) {
    const chosen = select.value;
    select.replaceChildren(el("option", {value: ""}, "(choose)"), ...names.map(n => el("option", {value: n}, n)));
    select.value = names.includes(chosen) ? chosen : "";
    select.dataset.names = names.join(",");
  }
}

async function logs() {
  const service = document.getElementById("log-service").value;
  const out = document.getElementById("logs");
  if (!service) { out.textContent = ""; return; }
  const answer = await fetch(`/api/logs?service=${encodeURIComponent(service)}&tail=50`, {credentials: "same-origin"});
  const data = await answer.json();
  if (!answer.ok) { out.textContent = data.error; return; }
  out.textContent = data.lines.map(l => l.notice ? `[${l.slot} ${l.node}] ${l.notice}` : `[${l.slot} ${l.node}] ${l.text}`).join("\n");
  out.scrollTop = out.scrollHeight;  // a tail: the newest lines in view
}

async function poll() {
  clearTimeout(timer);
  const status = document.getElementById("status");
  try {
    const answer = await fetch("/api/overview", {credentials: "same-origin"});
    const data = await answer.json();
    if (answer.status === 401) { showLogin(data.error); return; }
    if (!answer.ok) { status.textContent = data.error; }
    else {
      document.getElementById("login").hidden = true;
      document.getElementById("main").hidden = false;
      draw(data);
      await logs();
      status.textContent = `updated ${new Date().toLocaleTimeString()}`;
      document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    }
  } catch (err) {
    status.textContent = `cannot reach the node: ${err}`;
  }
  timer = setTimeout(poll, POLL_MS);
}

function showLogin(message) {
  document.getElementById("main").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

// A refused token shows the form again; a node that does not answer (a network error, a
// 5xx while it starts or restarts) is asked again with back-off, up to LOGIN_TRIES times.
const LOGIN_TRIES = 8;

async function login(token, attempt = 1) {
  const status = document.getElementById("status");
  let answer = null;
  try {
    answer = await fetch("/login", {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({token})});
  } catch (err) {
    status.textContent = `cannot reach the node to log in (try ${attempt} of ${LOGIN_TRIES}): ${err}`;
  }
  if (answer && answer.ok) { poll(); return; }
  if (answer && answer.status < 500) {
    let error = `login refused (${answer.status})`;
    try { error = (await answer.json()).error || error; } catch (_) { /* not JSON: keep the status */ }
    showLogin(error);
    return;
  }
  if (answer) status.textContent = `the node answered ${answer.status} to the login (try ${attempt} of ${LOGIN_TRIES})`;
  if (attempt >= LOGIN_TRIES) { showLogin(status.textContent); return; }
  setTimeout(() => login(token, attempt + 1), Math.min(250 * 2 ** (attempt - 1), 4000));
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", ev => {
    ev.preventDefault();
    login(document.getElementById("token").value.trim());
  });
  document.getElementById("log-service").addEventListener("change", logs);
  // `https://node:port/#token=shoal_…` logs in at once (a fragment never reaches a server or a log)
  const m = location.hash.match(/^#token=(.+)$/);
  if (m) {
    history.replaceState(null, "", "/");
    login(decodeURIComponent(m[1]));
  } else {
    poll();
  }
});

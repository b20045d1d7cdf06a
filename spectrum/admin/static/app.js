// spectrum admin page: plain JavaScript, no build step, nothing loaded from
// elsewhere. Talks to the v4 API with the token kept in sessionStorage.
"use strict";

const KEY = "spectrum-admin-token";
const SAMPLES = 120; // two minutes of one-second samples
const state = {
  token: null, zone: null, apps: [], samples: [], last: null, timer: null, tick: 0, editing: null,
  canEdit: false, ruleNotes: {}, editingApp: null,
};

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + state.token };
  const options = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch("/client/v4" + path, options);
  } catch (e) {
    return { ok: false, status: 0, message: "cannot reach spectrum: " + e.message };
  }
  let data = null;
  try { data = await response.json(); } catch (e) { /* not JSON */ }
  const message = data && data.errors && data.errors.length
    ? data.errors.map((error) => error.message).join("; ")
    : (response.ok ? "" : "HTTP " + response.status);
  return { ok: response.ok && data && data.success, status: response.status, data, message };
}

function setStatus(text, bad) {
  const node = $("#status");
  node.textContent = text;
  node.style.color = bad ? "#ff8a8a" : "";
}

// On a phone each table row becomes a card: every cell is labelled with
// its column's heading (shown by the stylesheet under 600px).
function labelCells(table) {
  const headings = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
  for (const row of table.querySelectorAll("tbody tr")) {
    [...row.children].forEach((cell, index) => {
      if (headings[index] && !cell.hasAttribute("colspan")) cell.setAttribute("data-label", headings[index]);
    });
  }
}

// login -------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  const answer = await api("GET", "/zones");
  if (!answer.ok) {
    state.token = null;
    return answer.message || "sign-in failed";
  }
  const zone = answer.data.result[0];
  state.zone = zone.id;
  // A read-only token sees no write controls.
  const verified = await api("GET", "/user/tokens/verify");
  state.canEdit = verified.ok && verified.data.result.permissions === "edit";
  document.body.classList.toggle("read-only", !state.canEdit);
  $("#zone").textContent = "zone " + (zone.name ? zone.name + " (" + zone.id + ")" : zone.id);
  sessionStorage.setItem(KEY, token);
  $("#login-panel").hidden = true;
  $("#dashboard").hidden = false;
  $("#logout").hidden = false;
  state.tick = 0;
  poll();
  return null;
}

function signOut() {
  sessionStorage.removeItem(KEY);
  clearTimeout(state.timer);
  state.token = null;
  state.samples = [];
  state.last = null;
  $("#dashboard").hidden = true;
  $("#logout").hidden = true;
  $("#login-panel").hidden = false;
  $("#zone").textContent = "";
  setStatus("");
}

// polling -----------------------------------------------------------------

async function poll() {
  clearTimeout(state.timer);
  if (!state.token) return;
  try {
    await refreshLive();
    if (state.tick % 2 === 0) {
      await Promise.all([refreshApps(), refreshRules(), refreshEvents(), refreshHealth()]);
    }
    if (state.tick % 60 === 0) await refreshHour();
    state.tick += 1;
  } catch (e) {
    setStatus("error: " + e.message, true);
  }
  if (state.token) state.timer = setTimeout(poll, 1000);
}

function zonePath(rest) {
  return "/zones/" + encodeURIComponent(state.zone) + rest;
}

async function refreshLive() {
  const answer = await api("GET", zonePath("/spectrum/live"));
  if (!answer.ok) {
    if (answer.status === 401 || answer.status === 403) { signOut(); $("#login-error").textContent = answer.message; }
    setStatus(answer.message, true);
    return;
  }
  const live = answer.data.result;
  let connections = 0, ingress = 0, egress = 0;
  for (const app of Object.values(live.apps)) {
    connections += app.connections; ingress += app.bytes_ingress; egress += app.bytes_egress;
  }
  state.openByApp = live.apps;
  const sample = { time: live.time, connections, inRate: 0, outRate: 0 };
  if (state.last && live.time > state.last.time) {
    const dt = live.time - state.last.time;
    sample.inRate = Math.max(0, (ingress - state.last.ingress) / dt);
    sample.outRate = Math.max(0, (egress - state.last.egress) / dt);
  }
  state.last = { time: live.time, ingress, egress };
  state.samples.push(sample);
  if (state.samples.length > SAMPLES) state.samples.shift();
  drawChart($("#chart-connections"), [{ cls: "conn", values: state.samples.map((s) => s.connections), area: true }], formatCount);
  // "to clients" first, so the dashed "from clients" stays visible on top
  // when the two are equal (an echo).
  drawChart($("#chart-bytes"), [
    { cls: "out", values: state.samples.map((s) => s.outRate) },
    { cls: "in", values: state.samples.map((s) => s.inRate) },
  ], formatBytes);
  setStatus("live · " + new Date(live.time * 1000).toLocaleTimeString());
}

// charts: our own SVG ---------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

// The chart's top: four gridline steps of a round size (1, 2, 2.5 or 5
// times a power of ten), at least one per step.
function niceMax(value) {
  const tick = Math.max(value / 4, 1);
  const power = Math.pow(10, Math.floor(Math.log10(tick)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= tick) return 4 * step * power;
  return 40 * power;
}

function drawChart(node, series, format, count = SAMPLES, ticks = [["-2 min", "start"], ["-1 min", "middle"], ["now", "end"]]) {
  const width = 600, height = 180, left = 56, right = 8, top = 10, bottom = 22;
  const plotW = width - left - right, plotH = height - top - bottom;
  let max = 0;
  for (const s of series) for (const v of s.values) max = Math.max(max, v);
  max = niceMax(max);
  node.replaceChildren();
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    node.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: y, y2: y }));
    const label = svg("text", { class: "axis", x: left - 6, y: y + 4, "text-anchor": "end" });
    label.textContent = format((max * i) / 4);
    node.append(label);
  }
  for (const [text, anchor] of ticks) {
    const x = anchor === "start" ? left : anchor === "middle" ? left + plotW / 2 : width - right;
    const label = svg("text", { class: "axis", x, y: height - 6, "text-anchor": anchor });
    label.textContent = text;
    node.append(label);
  }
  const step = plotW / (count - 1);
  for (const s of series) {
    if (!s.values.length) continue;
    const offset = count - s.values.length;
    const points = s.values.map((v, i) => [left + (offset + i) * step, top + plotH - (plotH * v) / max]);
    const d = points.map(([x, y], i) => (i ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1)).join(" ");
    if (s.area) {
      const first = points[0][0].toFixed(1), last = points[points.length - 1][0].toFixed(1);
      node.append(svg("path", { class: "area", d: d + " L" + last + " " + (top + plotH) + " L" + first + " " + (top + plotH) + " Z" }));
    }
    node.append(svg("path", { class: "line " + s.cls, d }));
  }
}

function formatCount(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

function formatBytes(value) {
  const units = ["B/s", "KB/s", "MB/s", "GB/s"];
  let i = 0;
  while (value >= 1000 && i < units.length - 1) { value /= 1000; i += 1; }
  const shown = value >= 10 || Number.isInteger(value) ? Math.round(value) : value.toFixed(1);
  return shown + " " + units[i];
}

function formatTotal(bytes) {
  return formatBytes(bytes).replace("/s", "");
}

// apps --------------------------------------------------------------------------

async function refreshApps() {
  const answer = await api("GET", zonePath("/spectrum/apps?per_page=1000"));
  if (!answer.ok) return setStatus(answer.message, true);
  state.apps = answer.data.result;
  const body = $("#apps tbody");
  body.replaceChildren();
  for (const app of state.apps) {
    const origins = el("td", { class: "origins" });
    for (const origin of app.origins) {
      const up = origin.healthy && origin.enabled !== false;
      // Without a monitor nothing probes it: not "up", only not failing.
      const unknown = up && origin.monitored === false;
      const word = unknown ? "not monitored" : up ? "up" : "down";
      const where = origin.address + (origin.port ? ":" + origin.port : "");
      origins.append(el("span", { class: "origin", title: origin.error || word, "data-healthy": String(up), "data-monitored": String(origin.monitored !== false) },
        el("span", { class: "dot " + (unknown ? "unknown" : up ? "up" : "down"), "aria-hidden": "true" }),
        el("span", { class: "mono" }, origin.name === where ? where : origin.name + " " + where),
        el("span", { class: "pill " + (unknown ? "" : up ? "good" : "bad") }, word)));
    }
    const actions = el("td", { class: "actions" });
    if (app.source === "api" && state.canEdit) {
      actions.append(
        el("button", { type: "button", class: "small secondary", "data-action": "edit", onclick: () => editApp(app) }, "Edit"),
        el("button", { type: "button", class: "small danger", "data-action": "delete", onclick: () => deleteApp(app) }, "Delete"));
    } else if (app.source !== "api") {
      actions.append(el("span", { class: "muted small" }, "config file"));
    }
    const listening = app.listening.map((l) => l.ip + ":" + l.port).join(", ") || "—";
    const open = state.openByApp && state.openByApp[app.name] ? state.openByApp[app.name].connections : 0;
    body.append(el("tr", { "data-app": app.name },
      el("td", {}, el("strong", {}, app.name), app.dns && app.dns.name && app.dns.name !== app.name ? el("div", { class: "muted small" }, app.dns.name) : null),
      el("td", { class: "mono" }, app.protocol),
      el("td", { class: "mono" }, listening),
      origins,
      el("td", { class: "num" }, open),
      el("td", {}, el("span", { class: "pill" }, app.source)),
      actions));
  }
  labelCells($("#apps"));
}

// creating and editing apps --------------------------------------------------------

const READ_ONLY_FIELDS = ["created_on", "modified_on", "source", "listening", "origins", "traffic_type", "argo_smart_routing"];

function originText(app) {
  if (app.origin_direct) return app.origin_direct.map((url) => url.replace(/^[a-z]+:\/\//, "")).join(", ");
  if (app.origin_pool) {
    return app.origin_pool.origins.map((o) => (o.address.includes(":") ? "[" + o.address + "]" : o.address) + (o.port ? ":" + o.port : "")).join(", ");
  }
  return "";
}

function showAppForm(app) {
  state.editingApp = app || null;
  const form = $("#app-form");
  form.hidden = false;
  const [protocol, port] = app ? String(app.protocol).toLowerCase().split("/") : ["tcp", ""];
  $("#app-name").value = app ? app.name : "";
  $("#app-name").disabled = Boolean(app);
  $("#app-protocol").value = protocol;
  $("#app-port").value = port || (app && app.ports ? String(app.ports[0].destination_port) : "");
  $("#app-ip").value = app && app.ips ? app.ips.join(", ") : app && app.edge_ips && app.edge_ips.ips ? app.edge_ips.ips.join(", ") : "";
  $("#app-origins").value = app ? originText(app) : "";
  $("#app-host").value = app && app.dns ? app.dns.name : "";
  $("#app-tls").value = app && app.tls ? app.tls : "off";
  $("#app-proxy").value = app && app.proxy_protocol ? app.proxy_protocol : "off";
  $("#app-save").textContent = app ? "Save app" : "Create app";
  $("#app-error").textContent = "";
  $("#app-name").focus();
}

function hideAppForm() {
  state.editingApp = null;
  $("#app-form").hidden = true;
}

function editApp(app) {
  showAppForm(app);
  $("#app-form").scrollIntoView({ block: "nearest" });
}

// "192.0.2.1:22", "[2001:db8::1]:22", "origin.example:22" -> [address, port]
function splitOrigin(text) {
  const match = /^\[([^\]]+)\]:(.+)$/.exec(text) || /^([^:]+):(.+)$/.exec(text);
  return match ? [match[1], match[2]] : [text, ""];
}

function appBody() {
  const protocol = $("#app-protocol").value;
  const old = state.editingApp;
  const body = {};
  if (old) {
    // Keep what the form does not show (limits, timeouts...).
    for (const [key, value] of Object.entries(old)) if (!READ_ONLY_FIELDS.includes(key)) body[key] = value;
    for (const key of ["origin_direct", "origin_pool", "origin_dns", "origin_port", "ports", "ips", "edge_ips", "dns"]) delete body[key];
  }
  body.name = $("#app-name").value.trim();
  body.protocol = protocol + "/" + $("#app-port").value.trim();
  const ips = $("#app-ip").value.split(",").map((ip) => ip.trim()).filter(Boolean);
  if (ips.length) body.ips = ips;
  const host = $("#app-host").value.trim();
  if (host) body.dns = { type: "CNAME", name: host };
  body.tls = $("#app-tls").value;
  body.proxy_protocol = $("#app-proxy").value;
  const origins = $("#app-origins").value.split(",").map((o) => o.trim()).filter(Boolean);
  if (origins.length === 1) {
    body.origin_direct = [protocol + "://" + origins[0]];
  } else {
    body.origin_pool = {
      name: body.name,
      origins: origins.map((text, i) => {
        const [address, port] = splitOrigin(text);
        const origin = { name: body.name + "-" + (i + 1), address };
        if (port) origin.port = Number(port);
        return origin;
      }),
    };
  }
  return body;
}

async function saveApp(event) {
  event.preventDefault();
  const old = state.editingApp;
  const path = zonePath("/spectrum/apps" + (old ? "/" + encodeURIComponent(old.id) : ""));
  const answer = await api(old ? "PUT" : "POST", path, appBody());
  if (!answer.ok) {
    $("#app-error").textContent = answer.message;
    return;
  }
  hideAppForm();
  await refreshApps();
  await refreshHour();
}

async function deleteApp(app) {
  if (!window.confirm("Delete app " + app.name + "? Its open connections finish.")) return;
  const answer = await api("DELETE", zonePath("/spectrum/apps/" + encodeURIComponent(app.id)));
  $("#app-error").textContent = answer.ok ? "" : answer.message;
  await refreshApps();
  await refreshHour();
}

// the last hour, per app (the analytics API) -----------------------------------------

async function refreshHour() {
  const until = Math.floor(Date.now() / 60000) * 60000 + 60000;
  const since = until - 3600 * 1000;
  const range = "&time_delta=minute&dimensions=appID&since=" + new Date(since).toISOString() + "&until=" + new Date(until).toISOString();
  const [connects, bytes] = await Promise.all([
    api("GET", zonePath("/spectrum/analytics/events/bytime?metrics=count&filters=event%3D%3Dconnect" + range)),
    api("GET", zonePath("/spectrum/analytics/events/bytime?metrics=bytesEgress" + range)),
  ]);
  if (!connects.ok || !bytes.ok) return;
  const byApp = (answer) => Object.fromEntries(answer.data.result.data.map((row) => [row.dimensions[0], row.metrics[0]]));
  const counts = byApp(connects), sent = byApp(bytes);
  const box = $("#hour-charts");
  box.replaceChildren();
  if (!state.apps.length) box.append(el("p", { class: "muted" }, "No apps yet."));
  for (const app of state.apps) {
    const values = counts[app.id] || [];
    const total = values.reduce((a, b) => a + b, 0);
    const bytesOut = (sent[app.id] || []).reduce((a, b) => a + b, 0);
    const chart = svg("svg", { class: "chart", viewBox: "0 0 600 180", role: "img", "aria-label": "Connections per minute of " + app.name + " in the last hour" });
    const figure = el("figure", { class: "hour", "data-app": app.name, "data-connections": String(total) },
      el("figcaption", {}, el("strong", {}, app.name), " ", el("span", { class: "muted small" }, total + (total === 1 ? " connection, " : " connections, ") + formatTotal(bytesOut) + " to clients")),
      chart);
    box.append(figure);
    drawChart(chart, [{ cls: "conn", values, area: true }], formatCount, 60, [["-60 min", "start"], ["-30 min", "middle"], ["now", "end"]]);
  }
}

// access rules ------------------------------------------------------------------

function rulesPath(rule) {
  const base = "/firewall/access_rules/rules";
  if (rule.scope.type === "user") return "/user" + base;
  if (rule.scope.type === "app") {
    const app = state.apps.find((a) => a.name === rule.app);
    return zonePath("/spectrum/apps/" + encodeURIComponent(app ? app.id : rule.app) + base);
  }
  return zonePath(base);
}

async function refreshRules() {
  if (state.editing) return; // keep the row being edited as it is
  const requests = [api("GET", zonePath("/firewall/access_rules/rules?per_page=1000"))];
  for (const app of state.apps) {
    requests.push(api("GET", zonePath("/spectrum/apps/" + encodeURIComponent(app.id) + "/firewall/access_rules/rules?per_page=1000")));
  }
  const answers = await Promise.all(requests);
  const rules = [];
  for (const answer of answers) if (answer.ok) rules.push(...answer.data.result);
  for (const rule of rules) state.ruleNotes[rule.id] = rule;
  if (state.editing) return;
  const body = $("#rules tbody");
  body.replaceChildren();
  if (!rules.length) body.append(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "No access rules: every client is admitted.")));
  for (const rule of rules) body.append(ruleRow(rule));
  labelCells($("#rules"));
}

function ruleRow(rule) {
  const actions = el("td", { class: "actions" });
  if (rule.source === "api" && state.canEdit) {
    actions.append(
      el("button", { type: "button", class: "small secondary", "data-action": "edit", onclick: () => editRule(row, rule) }, "Edit"),
      el("button", { type: "button", class: "small danger", "data-action": "delete", onclick: () => deleteRule(rule) }, "Delete"));
  } else if (rule.source !== "api") {
    actions.append(el("span", { class: "muted small" }, "config file"));
  }
  const scope = rule.scope.type === "app" ? "app " + rule.app : rule.scope.type;
  const row = el("tr", { "data-rule": rule.id },
    el("td", {}, el("span", { class: "pill " + rule.mode }, rule.mode)),
    el("td", {}, rule.configuration.target),
    el("td", { class: "mono" }, rule.configuration.value),
    el("td", {}, rule.notes),
    el("td", {}, scope),
    actions);
  return row;
}

function editRule(row, rule) {
  state.editing = rule.id;
  const mode = el("select", { "aria-label": "mode" },
    el("option", { value: "block" }, "block"), el("option", { value: "whitelist" }, "whitelist"));
  mode.value = rule.mode;
  const notes = el("input", { "aria-label": "notes", value: rule.notes });
  const save = el("button", { type: "button", class: "small", "data-action": "save", onclick: async () => {
    const answer = await api("PATCH", rulesPath(rule) + "/" + encodeURIComponent(rule.id), { mode: mode.value, notes: notes.value });
    $("#rule-error").textContent = answer.ok ? "" : answer.message;
    state.editing = null;
    await refreshRules();
  } }, "Save");
  const cancel = el("button", { type: "button", class: "small secondary", onclick: () => { state.editing = null; refreshRules(); } }, "Cancel");
  row.children[0].replaceChildren(mode);
  row.children[3].replaceChildren(notes);
  row.children[5].replaceChildren(save, cancel);
}

async function deleteRule(rule) {
  const answer = await api("DELETE", rulesPath(rule) + "/" + encodeURIComponent(rule.id));
  $("#rule-error").textContent = answer.ok ? "" : answer.message;
  await refreshRules();
}

async function addRule(event) {
  event.preventDefault();
  const target = $("#rule-target").value;
  let value = $("#rule-value").value.trim();
  const body = { mode: $("#rule-mode").value, configuration: { target, value }, notes: $("#rule-notes").value };
  const path = $("#rule-scope").value === "user" ? "/user/firewall/access_rules/rules" : zonePath("/firewall/access_rules/rules");
  const answer = await api("POST", path, body);
  if (!answer.ok) {
    $("#rule-error").textContent = answer.message;
    return;
  }
  $("#rule-error").textContent = "";
  $("#rule-value").value = "";
  $("#rule-notes").value = "";
  await refreshRules();
}

// events and health ---------------------------------------------------------------

function timeOf(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
}

function statusPill(status) {
  const good = status === 0 || status === 200;
  return el("span", { class: "pill " + (good ? "good" : "bad") }, status);
}

async function refreshEvents() {
  const [recent, refused] = await Promise.all([
    api("GET", zonePath("/spectrum/events?limit=30")),
    api("GET", zonePath("/spectrum/events?refused=true&limit=30")),
  ]);
  if (recent.ok) {
    const body = $("#events tbody");
    body.replaceChildren();
    if (!recent.data.result.length) body.append(el("tr", {}, el("td", { colspan: "7", class: "muted" }, "No connections yet.")));
    for (const e of recent.data.result) {
      body.append(el("tr", { "data-event": e.Event },
        el("td", {}, timeOf(e.Timestamp)),
        el("td", {}, e.Application),
        el("td", {}, e.Event),
        el("td", { class: "mono" }, e.ClientIP + ":" + e.ClientPort),
        el("td", { class: "mono" }, e.OriginName || "—"),
        el("td", {}, statusPill(e.Status)),
        el("td", { class: "num" }, e.Event === "connect" ? "" : formatTotal(e.ClientBytes + e.OriginBytes))));
    }
    labelCells($("#events"));
  }
  if (refused.ok) {
    const body = $("#refused tbody");
    body.replaceChildren();
    if (!refused.data.result.length) body.append(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "None refused.")));
    // One row per client, app, status and reason: a client that repeats is
    // counted, not listed again (the newest comes first).
    const groups = new Map();
    for (const e of refused.data.result) {
      const why = refusalWhy(e);
      const key = [e.Application, e.ClientIP, e.Status, why].join("\u0000");
      const group = groups.get(key);
      if (group) group.count += 1;
      else groups.set(key, { event: e, why, count: 1 });
    }
    for (const { event: e, why, count } of groups.values()) {
      body.append(el("tr", { "data-client": e.ClientIP, "data-count": String(count) },
        el("td", {}, timeOf(e.Timestamp)),
        el("td", {}, e.Application),
        el("td", { class: "mono" }, e.ClientIP),
        el("td", { class: "num" }, count > 1 ? "×" + count : "1"),
        el("td", {}, statusPill(e.Status)),
        el("td", { class: "wrap" }, why)));
    }
    labelCells($("#refused"));
  }
}

// An access rule's refusal by the rule's notes (what the operator wrote),
// not its id.
function refusalWhy(e) {
  const reason = e.Reason || e.ClientMatchedIpFirewall || "";
  const match = /^access rule (\S+) \((.*)\)$/.exec(reason);
  if (!match) return reason;
  const rule = state.ruleNotes[match[1]];
  if (rule && rule.notes) return "rule “" + rule.notes + "” (" + match[2] + ")";
  return "rule: " + match[2];
}

async function refreshHealth() {
  const answer = await api("GET", zonePath("/spectrum/health?limit=20"));
  if (!answer.ok) return;
  const body = $("#health tbody");
  body.replaceChildren();
  const changes = answer.data.result.changes;
  if (!changes.length) body.append(el("tr", {}, el("td", { colspan: "5", class: "muted" }, "No origin has changed state.")));
  for (const change of changes) {
    body.append(el("tr", {},
      el("td", {}, timeOf(change.time)),
      el("td", {}, change.app),
      el("td", { class: "mono" }, change.origin),
      el("td", {}, el("span", { class: "pill " + (change.healthy ? "good" : "bad") }, change.healthy ? "up" : "down")),
      el("td", {}, change.error || change.reason || "")));
  }
  labelCells($("#health"));
}

// start ------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("#login-error").textContent = "";
    const error = await signIn($("#token").value.trim());
    if (error) $("#login-error").textContent = error;
    else $("#token").value = "";
  });
  $("#logout").addEventListener("click", signOut);
  $("#rule-form").addEventListener("submit", addRule);
  $("#app-new").addEventListener("click", () => showAppForm(null));
  $("#app-cancel").addEventListener("click", hideAppForm);
  $("#app-form").addEventListener("submit", saveApp);
  const saved = sessionStorage.getItem(KEY);
  if (saved) {
    const error = await signIn(saved);
    if (error) { sessionStorage.removeItem(KEY); $("#login-error").textContent = error; }
  }
});

// kernel filter ------------------------------------------------------------------------
// What the eBPF filter dropped before the process saw it, per app and reason
// (GET .../spectrum/kernel), redrawn every two seconds while signed in.

(function kernelPanel() {
  async function refresh() {
    if (!state.token || !state.zone) return;
    const answer = await api("GET", zonePath("/spectrum/kernel"));
    if (!answer.ok) return;
    const kernel = answer.data.result;
    const summary = $("#kernel-state");
    summary.textContent = kernel.active
      ? "on (kernel_filter: " + kernel.mode + "): blocked sources and SYNs over per_ip_rate are dropped before they are queued"
      : "off (" + kernel.reason + "): refused sources are shed after accept";
    summary.setAttribute("data-active", String(kernel.active));
    const body = $("#kernel tbody");
    body.replaceChildren();
    if (!kernel.dropped.length) {
      body.append(el("tr", {}, el("td", { colspan: "4", class: "muted" }, "Nothing dropped in the kernel.")));
    }
    for (const drop of kernel.dropped) {
      body.append(el("tr", { "data-app": drop.app, "data-reason": drop.reason },
        el("td", {}, drop.app || "(shared port)"),
        el("td", { class: "mono" }, drop.reason),
        el("td", { class: "num" }, drop.packets.toLocaleString()),
        el("td", { class: "num" }, formatTotal(drop.bytes))));
    }
    labelCells($("#kernel"));
  }
  setInterval(() => { refresh().catch(() => {}); }, 2000);
})();

"use strict";
// The raftkv dashboard. The page asks every node for its own view
// (/cluster/status?local=true, and /metrics when the node has it) about once a second,
// so it keeps working when the node that served it goes down. The node list comes from
// the leader's /cluster/nodes?local=true (any reachable node when there is no leader).
// Fields and metrics that a node does not report are shown as "—".

const POLL_INTERVAL_MS = 1000;
const REQUEST_TIMEOUT_MS = 800;
const HISTORY_ROWS = 20;
const SPARKLINE_POINTS = 60;
const LATENCY_METRIC = "raftkv_http_request_duration_seconds";
// The page's own polls are not client load; leave them out of the latency figures.
const DASHBOARD_ROUTES = new Set([
  "/cluster/status", "/cluster/nodes", "/metrics", "/dashboard", "/health",
]);
const DASH = "—";
// A node without /metrics (an older version) is asked again only this much later.
const METRICS_RETRY_MS = 30000;

const state = {
  servingNodeId: null,
  nodes: new Map(),          // id -> node record, see nodeRecord()
  membershipSource: null,    // the id of the node whose /cluster/nodes we last used
  leaderId: null,
  term: null,
  history: new Map(),        // term -> {term, leader, electedAt, firstSeen}
  lastCommit: null,          // {index, at}: the highest commit index seen, and when
  writeRates: [],            // writes/s, one per poll, newest last
  latency: null,             // {p50, p99, mean, rate} over the last poll, or null
  metricsSeen: false,        // whether any node ever answered /metrics
  lastPollAt: null,          // when the last poll finished (ms), for rates
  pollCount: 0,
};

function nodeRecord(id, httpAddr) {
  return {
    id: id,
    httpAddr: httpAddr,
    membership: null,
    status: null,            // the last /cluster/status?local=true answer
    reachable: null,         // whether the last poll of this node got an answer
    error: null,
    view: null,              // this node's entry in the membership source's /cluster/nodes
    histogram: null,         // its last latency histogram totals, for deltas
    metricsRetryAt: 0,       // when to ask again a node that has no /metrics (ms)
  };
}

// -- talking to the nodes ---------------------------------------------------------------

function baseUrl(node) {
  // The serving node is asked on the page's own origin; the others on their HTTP address.
  if (node.id === state.servingNodeId) return "";
  const colon = node.httpAddr.lastIndexOf(":");
  let host = node.httpAddr.slice(0, colon);
  const port = node.httpAddr.slice(colon + 1);
  // A node bound to every interface advertises a wildcard; reach it the way we reached
  // the page.
  if (host === "" || host === "0.0.0.0" || host === "[::]" || host === "::") {
    host = location.hostname.includes(":") ? "[" + location.hostname + "]" : location.hostname;
  }
  return location.protocol + "//" + host + ":" + port;
}

async function fetchWithTimeout(url) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  try {
    const response = await fetch(url, { signal: controller.signal, cache: "no-store" });
    const body = await response.text();
    return { ok: response.ok, status: response.status, body: body };
  } finally {
    clearTimeout(timer);
  }
}

async function fetchJson(url) {
  const response = await fetchWithTimeout(url);
  if (!response.ok) throw new Error("HTTP " + response.status);
  return JSON.parse(response.body);
}

async function pollStatus(node) {
  try {
    node.status = await fetchJson(baseUrl(node) + "/cluster/status?local=true");
    node.reachable = true;
    node.error = null;
  } catch (error) {
    node.status = null;
    node.reachable = false;
    if (error.name === "AbortError") node.error = "timed out";
    else if (error.name === "TypeError") node.error = "no answer";  // refused, reset, CORS
    else node.error = String(error.message || error);
  }
}

async function pollMetrics(node) {
  if (!node.reachable) {
    node.histogram = null;
    return null;
  }
  if (Date.now() < node.metricsRetryAt) return null;
  let response;
  try {
    response = await fetchWithTimeout(baseUrl(node) + "/metrics");
  } catch (error) {
    return null;
  }
  if (response.status === 404) node.metricsRetryAt = Date.now() + METRICS_RETRY_MS;
  if (!response.ok) return null;
  state.metricsSeen = true;
  const current = parseHistogram(response.body);
  const previous = node.histogram;
  node.histogram = current;
  if (current === null || previous === null) return null;
  return subtractHistograms(current, previous);
}

// Membership, and the leader's view of every follower (match index, reachability and,
// where the node reports them, lag, last contact and health).
async function refreshMembership() {
  const candidates = [];
  if (state.leaderId !== null && state.nodes.has(state.leaderId)) {
    candidates.push(state.nodes.get(state.leaderId));
  }
  for (const node of state.nodes.values()) {
    if (node.reachable && node.id !== state.leaderId) candidates.push(node);
  }
  for (const source of candidates) {
    try {
      applyMembership(await fetchJson(baseUrl(source) + "/cluster/nodes?local=true"));
      return;
    } catch (error) {
      // Try the next node.
    }
  }
}

function applyMembership(doc) {
  if (!Array.isArray(doc.nodes)) return;
  const present = new Set();
  for (const entry of doc.nodes) {
    if (typeof entry.id !== "number" || typeof entry.httpAddr !== "string") continue;
    present.add(entry.id);
    let node = state.nodes.get(entry.id);
    if (node === undefined) {
      node = nodeRecord(entry.id, entry.httpAddr);
      state.nodes.set(entry.id, node);
    }
    node.httpAddr = entry.httpAddr;
    node.membership = entry.membership === undefined ? null : entry.membership;
    node.view = entry;
  }
  for (const id of [...state.nodes.keys()]) {
    if (!present.has(id)) state.nodes.delete(id);
  }
  state.membershipSource = typeof doc.nodeId === "number" ? doc.nodeId : null;
}

// -- the Prometheus histogram -----------------------------------------------------------

function parseLabels(text) {
  const labels = {};
  const pattern = /(\w+)="((?:[^"\\]|\\.)*)"/g;
  let match;
  while ((match = pattern.exec(text)) !== null) {
    labels[match[1]] = match[2].replace(/\\(.)/g, (all, ch) => (ch === "n" ? "\n" : ch));
  }
  return labels;
}

// Totals over every series of client requests: {buckets: Map(le -> count), sum, count},
// or null when the node does not export the metric.
function parseHistogram(text) {
  const buckets = new Map();
  let sum = 0;
  let count = 0;
  let found = false;
  for (const line of text.split("\n")) {
    if (!line.startsWith(LATENCY_METRIC)) continue;
    const match = /^(\w+)\{(.*)\}\s+(\S+)/.exec(line);
    if (match === null) continue;
    const labels = parseLabels(match[2]);
    if (DASHBOARD_ROUTES.has(labels.route)) continue;
    const value = Number(match[3]);
    if (!Number.isFinite(value)) continue;
    found = true;
    if (match[1] === LATENCY_METRIC + "_bucket") {
      const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
      buckets.set(le, (buckets.get(le) || 0) + value);
    } else if (match[1] === LATENCY_METRIC + "_sum") {
      sum += value;
    } else if (match[1] === LATENCY_METRIC + "_count") {
      count += value;
    }
  }
  return found ? { buckets: buckets, sum: sum, count: count } : null;
}

// What happened between two scrapes; null when a counter went down (the node restarted).
function subtractHistograms(current, previous) {
  const buckets = new Map();
  for (const [le, value] of current.buckets) {
    const delta = value - (previous.buckets.get(le) || 0);
    if (delta < 0) return null;
    buckets.set(le, delta);
  }
  const count = current.count - previous.count;
  if (count < 0) return null;
  return { buckets: buckets, sum: current.sum - previous.sum, count: count };
}

function addHistograms(total, part) {
  if (total === null) return part;
  const buckets = new Map(total.buckets);
  for (const [le, value] of part.buckets) buckets.set(le, (buckets.get(le) || 0) + value);
  return { buckets: buckets, sum: total.sum + part.sum, count: total.count + part.count };
}

// The q-quantile, interpolating linearly inside the bucket it falls in (as Prometheus's
// histogram_quantile does).
function quantile(histogram, q) {
  const bounds = [...histogram.buckets.keys()].sort((a, b) => a - b);
  const total = histogram.buckets.get(Infinity);
  if (!total) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const bound of bounds) {
    const cumulative = histogram.buckets.get(bound);
    if (cumulative >= rank) {
      if (bound === Infinity) return lowerBound;
      const inBucket = cumulative - lowerCount;
      const fraction = inBucket > 0 ? (rank - lowerCount) / inBucket : 1;
      return lowerBound + (bound - lowerBound) * fraction;
    }
    lowerBound = bound;
    lowerCount = cumulative;
  }
  return lowerBound;
}

// -- what the polls mean ----------------------------------------------------------------

function reachableStatuses() {
  return [...state.nodes.values()].filter((node) => node.status !== null);
}

function findLeader() {
  // A leader cut off from the others may still think it leads an older term; the one
  // with the highest term is the real one.
  let leader = null;
  for (const node of reachableStatuses()) {
    if (node.status.role !== "leader") continue;
    if (leader === null || node.status.currentTerm > leader.status.currentTerm) leader = node;
  }
  return leader;
}

function recordHistory(now) {
  for (const node of reachableStatuses()) {
    const status = node.status;
    const leader = status.role === "leader" ? node.id : status.leader;
    if (typeof leader !== "number" || leader <= 0 || typeof status.currentTerm !== "number") {
      continue;
    }
    let entry = state.history.get(status.currentTerm);
    if (entry === undefined) {
      entry = { term: status.currentTerm, leader: leader, electedAt: null, firstSeen: now };
      state.history.set(status.currentTerm, entry);
    }
    // The leader's own electedAt is when it won; a follower's is when it heard of it.
    if (status.electedAt && (status.role === "leader" || entry.electedAt === null)) {
      entry.electedAt = status.electedAt;
    }
  }
}

function recordThroughput(now) {
  let commit = null;
  for (const node of reachableStatuses()) {
    if (typeof node.status.commitIndex === "number") {
      commit = commit === null ? node.status.commitIndex : Math.max(commit, node.status.commitIndex);
    }
  }
  if (commit === null) return;
  const last = state.lastCommit;
  if (last !== null && commit >= last.index && now > last.at) {
    state.writeRates.push((commit - last.index) / ((now - last.at) / 1000));
    if (state.writeRates.length > SPARKLINE_POINTS) state.writeRates.shift();
  }
  if (last === null || commit >= last.index) state.lastCommit = { index: commit, at: now };
}

function recordLatency(deltas, seconds) {
  let total = null;
  for (const delta of deltas) {
    if (delta !== null) total = addHistograms(total, delta);
  }
  if (total === null) {
    state.latency = null;
    return;
  }
  state.latency = {
    p50: total.count > 0 ? quantile(total, 0.5) : null,
    p99: total.count > 0 ? quantile(total, 0.99) : null,
    mean: total.count > 0 ? total.sum / total.count : null,
    rate: seconds > 0 ? total.count / seconds : null,
  };
}

// Entries this node is behind the leader: the leader's figure when it gives one, else
// the difference of the last indexes the two nodes report.
function lagOf(node, leader) {
  if (node.view && typeof node.view.lagEntries === "number") return node.view.lagEntries;
  if (leader === null) return null;
  if (node.id === leader.id) return 0;
  const progress = leader.status.replicationProgress || {};
  const entry = progress[String(node.id)];
  if (entry && typeof entry.lag === "number") return entry.lag;
  if (node.status && typeof node.status.lastIndex === "number") {
    return Math.max(0, leader.status.lastIndex - node.status.lastIndex);
  }
  return null;
}

function lastContactOf(node, leader) {
  if (node.view && typeof node.view.lastContactSeconds === "number") {
    return node.view.lastContactSeconds;
  }
  const progress = leader && leader.status.replicationProgress
    ? leader.status.replicationProgress[String(node.id)] : null;
  if (progress && typeof progress.lastContactSeconds === "number") {
    return progress.lastContactSeconds;
  }
  return null;
}

function healthOf(node, leader) {
  if (node.view && typeof node.view.health === "string") return node.view.health;
  const progress = leader && leader.status.replicationProgress
    ? leader.status.replicationProgress[String(node.id)] : null;
  if (progress && typeof progress.health === "string") return progress.health;
  return null;
}

// -- drawing ----------------------------------------------------------------------------

function element(tag, attributes, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "className") el.className = value;
    else el.setAttribute(name, value);
  }
  for (const child of children) {
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function orDash(value) {
  return value === null || value === undefined ? DASH : String(value);
}

function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return DASH;
  if (seconds < 0.001) return (seconds * 1e6).toFixed(0) + " µs";
  if (seconds < 1) return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + " ms";
  return seconds.toFixed(2) + " s";
}

// "1.2 / 9.8 ms" rather than "1.2 ms / 9.8 ms" when both have the same unit, to fit a tile.
function formatSecondsPair(first, second) {
  const a = formatSeconds(first);
  const b = formatSeconds(second);
  const unit = (text) => text.slice(text.lastIndexOf(" "));
  return unit(a) === unit(b) ? a.slice(0, a.lastIndexOf(" ")) + " / " + b : a + " / " + b;
}

function formatTime(value) {
  if (value === null || value === undefined) return DASH;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? DASH : date.toLocaleTimeString();
}

function pairs(rows) {
  const list = element("dl", { className: "pairs" });
  for (const [name, value] of rows) list.append(element("dt", {}, name), element("dd", {}, value));
  return list;
}

function nodeCard(node, leader, lagScale) {
  const status = node.status;
  const role = status ? status.role : "unknown";
  const lag = lagOf(node, leader);
  const health = healthOf(node, leader);
  const card = element("article", {
    className: "node",
    "data-node-id": String(node.id),
    "data-role": role,
    "data-reachable": String(node.reachable === true),
    "data-health": health || "",
  });
  let badge;
  if (!node.reachable) badge = element("span", { className: "badge down" }, "unreachable");
  else badge = element("span", { className: "badge " + role }, role);
  card.append(element("h3", {}, "node " + node.id, badge));
  const serving = node.id === state.servingNodeId ? " · served this page" : "";
  card.append(element("div", { className: "addr" },
    node.httpAddr + " · " + orDash(node.membership) + serving));

  const healthText = element("span", health ? { className: "health-" + health } : {}, orDash(health));
  const contact = lastContactOf(node, leader);
  card.append(pairs([
    ["term", orDash(status && status.currentTerm)],
    ["commit index", orDash(status && status.commitIndex)],
    ["applied index", orDash(status && status.appliedIndex)],
    ["last index", orDash(status && status.lastIndex)],
    ["reachable", node.reachable ? "yes" : "no" + (node.error ? " (" + node.error + ")" : "")],
    ["health", healthText],
    ["last contact", contact === null ? DASH : formatSeconds(contact) + " ago"],
  ]));

  // Coloured by the leader's verdict when it gives one, else by whether there is lag.
  let fillClass = "fill";
  if (!node.reachable || health === "unreachable") fillClass += " down";
  else if (health ? health !== "healthy" : lag > 0) fillClass += " behind";
  const fill = element("div", { className: fillClass });
  fill.style.width = lag === null ? "0" : Math.min(100, (100 * lag) / lagScale) + "%";
  const caption = lag === null ? "lag " + DASH : "lag " + lag + (lag === 1 ? " entry" : " entries");
  card.append(element("div", { className: "lag", "data-lag": lag === null ? "" : String(lag) },
    element("div", { className: "bar" }, fill),
    element("div", { className: "caption" }, caption)));
  return card;
}

function drawNodes(leader) {
  const nodes = [...state.nodes.values()].sort((a, b) => a.id - b.id);
  const lags = nodes.map((node) => lagOf(node, leader)).filter((lag) => lag !== null);
  // Small lags get small bars: the full width is at least 10 entries.
  const lagScale = Math.max(10, ...lags);
  document.getElementById("nodes").replaceChildren(
    ...nodes.map((node) => nodeCard(node, leader, lagScale)));
}

function drawSummary(leader) {
  const leaderEl = document.getElementById("leader");
  leaderEl.textContent = leader ? "node " + leader.id : "none";
  leaderEl.dataset.leaderId = leader ? String(leader.id) : "";
  document.getElementById("term").textContent = orDash(state.term);
  const nodes = [...state.nodes.values()];
  const up = nodes.filter((node) => node.reachable).length;
  document.getElementById("reachable").textContent = nodes.length ? up + " / " + nodes.length : DASH;
  document.getElementById("commit").textContent = orDash(state.lastCommit && state.lastCommit.index);
  const rate = state.writeRates.length ? state.writeRates[state.writeRates.length - 1] : null;
  document.getElementById("writes").textContent = rate === null ? DASH : rate.toFixed(rate < 10 ? 1 : 0);
  const latency = state.latency;
  document.getElementById("latency").textContent = latency && latency.p50 !== null
    ? formatSecondsPair(latency.p50, latency.p99) : DASH;
}

function drawLoad() {
  const svg = document.getElementById("sparkline");
  const rates = state.writeRates;
  const top = Math.max(1, ...rates);
  const step = 300 / (SPARKLINE_POINTS - 1);
  const offset = SPARKLINE_POINTS - rates.length;
  const points = rates.map((rate, i) =>
    ((offset + i) * step).toFixed(1) + "," + (58 - (56 * rate) / top).toFixed(1));
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  svg.replaceChildren(line);

  const latency = state.latency;
  const rows = [
    ["writes/s, peak of last minute", rates.length ? Math.max(...rates).toFixed(0) : DASH],
    ["requests/s (from /metrics)", latency && latency.rate !== null ? latency.rate.toFixed(1) : DASH],
    ["latency p50", formatSeconds(latency && latency.p50)],
    ["latency p99", formatSeconds(latency && latency.p99)],
    ["latency mean", formatSeconds(latency && latency.mean)],
  ];
  if (!state.metricsSeen) rows.push(["latency source", "no node serves /metrics"]);
  document.getElementById("load").replaceChildren(...pairs(rows).childNodes);
}

function drawHistory() {
  const entries = [...state.history.values()].sort((a, b) => b.term - a.term).slice(0, HISTORY_ROWS);
  document.getElementById("history").replaceChildren(...entries.map((entry) =>
    element("tr", { "data-term": String(entry.term), "data-leader-id": String(entry.leader) },
      element("td", {}, entry.term),
      element("td", {}, "node " + entry.leader),
      element("td", {}, formatTime(entry.electedAt)),
      element("td", {}, formatTime(entry.firstSeen)))));
}

function drawConnection(message, isWarning) {
  const el = document.getElementById("connection");
  el.textContent = message;
  el.className = isWarning ? "warning" : "muted";
}

// -- the loop ---------------------------------------------------------------------------

async function bootstrap() {
  // The serving node's own list; ?local=true so that nodeId names the serving node.
  const doc = await fetchJson("/cluster/nodes?local=true");
  state.servingNodeId = typeof doc.nodeId === "number" ? doc.nodeId : null;
  applyMembership(doc);
}

async function pollOnce() {
  const started = Date.now();
  const nodes = [...state.nodes.values()];
  await Promise.all(nodes.map(pollStatus));
  const leader = findLeader();
  state.leaderId = leader ? leader.id : null;
  const terms = reachableStatuses().map((node) => node.status.currentTerm);
  state.term = terms.length ? Math.max(...terms) : state.term;
  const [deltas] = await Promise.all([Promise.all(nodes.map(pollMetrics)), refreshMembership()]);
  const now = Date.now();
  const seconds = state.lastPollAt !== null ? (now - state.lastPollAt) / 1000 : 0;
  state.lastPollAt = now;
  recordHistory(now);
  recordThroughput(now);
  recordLatency(deltas, seconds);

  const current = findLeader();
  drawSummary(current);
  drawNodes(current);
  drawLoad();
  drawHistory();
  const serving = state.nodes.get(state.servingNodeId);
  if (serving && !serving.reachable) {
    drawConnection("the node that served this page is down; still watching the others", true);
  } else if (!reachableStatuses().length) {
    drawConnection("no node answers", true);
  } else {
    drawConnection("updated " + new Date(now).toLocaleTimeString() + " (" + (now - started) + " ms)", false);
  }
  state.pollCount += 1;
  document.body.dataset.pollCount = String(state.pollCount);
}

async function loop() {
  const started = Date.now();
  try {
    if (state.nodes.size === 0) await bootstrap();
    await pollOnce();
  } catch (error) {
    drawConnection("cannot reach the cluster: " + (error.message || error), true);
  }
  setTimeout(loop, Math.max(0, POLL_INTERVAL_MS - (Date.now() - started)));
}

loop();

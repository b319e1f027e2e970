// The wsedge status page: fetches /status.json and updates the tables in place. Rates are the
// difference of two successive samples divided by the time between them. Only textContent
// is written, so names from the configuration cannot inject markup.
"use strict";

const params = new URLSearchParams(location.search);
const period = Math.max(200, Number(params.get("refresh") || 2000));
let previous = null; // { time_ms, workers: {index: worker} }
let refreshes = 0;

const $ = (id) => document.getElementById(id);
const text = (id, value) => { $(id).textContent = value; };

function human(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "n/a";
  const units = ["", "k", "M", "G", "T"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? Math.round(n * 10) / 10 : n.toFixed(1)) + units[i];
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
}

function row(tbody, cells, key) {
  let tr = tbody.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.key = key;
    tbody.appendChild(tr);
  }
  while (tr.children.length < cells.length) tr.appendChild(document.createElement("td"));
  cells.forEach((c, i) => {
    const td = tr.children[i];
    const value = typeof c === "object" && c !== null ? c : { v: c };
    td.textContent = value.v;
    td.className = value.cls || "";
    if (value.name) td.dataset.name = value.name;
  });
  return tr;
}

function prune(tbody, keys) {
  for (const tr of [...tbody.children]) if (!keys.has(tr.dataset.key)) tr.remove();
}

function rate(now, before, field, seconds) {
  if (!before || seconds <= 0) return null;
  return Math.max(0, (now[field] - before[field]) / seconds);
}

function render(s) {
  refreshes++;
  text("refreshes", String(refreshes));
  text("updated", new Date(s.time_ms).toLocaleTimeString());
  text("host", s.host || "?");
  text("error", (s.errors || []).join("; "));

  const seconds = previous ? (s.time_ms - previous.time_ms) / 1000 : 0;
  const sums = { live: 0, mi: null, mo: null, bi: null, bo: null };
  const add = (k, v) => { if (v !== null) sums[k] = (sums[k] || 0) + v; };
  const wbody = $("workers").tBodies[0];
  const wkeys = new Set();
  for (const w of s.workers) {
    const before = previous && previous.workers[w.index];
    const r = {
      mi: rate(w, before, "messages_from_clients", seconds),
      mo: rate(w, before, "messages_from_origins", seconds),
      bi: rate(w, before, "bytes_from_clients", seconds),
      bo: rate(w, before, "bytes_to_clients", seconds),
    };
    sums.live += w.live;
    for (const k of Object.keys(r)) add(k, r[k]);
    const key = "w" + w.index;
    wkeys.add(key);
    row(wbody, [
      w.index, w.config_version,
      { v: w.accepting === false ? "no" : "yes", cls: w.accepting === false ? "bad" : "ok" },
      { v: w.live, name: "live" }, w.accepted, w.upgraded, w.rejected,
      { v: human(r.mi), name: "msg-in" }, { v: human(r.mo), name: "msg-out" },
      { v: human(r.bi), name: "bytes-in" }, { v: human(r.bo), name: "bytes-out" },
    ], key);
  }
  prune(wbody, wkeys);
  text("live-total", String(sums.live));
  text("msg-rate", human(sums.mi) + " / " + human(sums.mo));
  text("byte-rate", human(sums.bi) + " / " + human(sums.bo));

  const rbody = $("routes").tBodies[0];
  const rkeys = new Set();
  for (const r of s.routes) {
    const key = "r" + r.name;
    rkeys.add(key);
    const per = Object.entries(r.by_worker).map(([w, n]) => `w${w}: ${n}`).join(", ") || "none";
    row(rbody, [{ v: r.name, cls: "l" }, { v: r.live, name: "live" }, { v: per, cls: "l" }], key);
  }
  prune(rbody, rkeys);
  text("routes-note", s.connections_capped
    ? `counted from the first ${s.connections_listed} connections listed by the dataplane`
    : "");

  const d = s.dataplane;
  text("dataplane", d
    ? `pid ${d.pid}, wsedge ${d.build}, up ${duration(d.uptime_ms)}, ${d.workers.length} workers, config version ${d.config_version} (${d.config_source})`
    : "not reachable");
  $("dataplane").className = d ? "" : "bad";
  const c = s.daemon;
  text("daemon", c ? `pid ${c.pid}, up ${duration(c.uptime_ms)}, ${c.config_file}` : "?");
  if (c) {
    text("config", `desired version ${c.desired_version}: ` +
      (c.in_sync ? "the dataplane runs it" : "NOT in sync" + (c.last_error ? ` (${c.last_error})` : "")));
    $("config").className = c.in_sync ? "ok" : "bad";
  }
  const f = c && c.fleet;
  if (!f) {
    text("fleet", "not configured");
    $("fleet").className = "muted";
  } else {
    let t = `${f.key} on ${f.etcd.join(", ")}: ` +
      (f.etcd_reachable ? "reachable" : `UNREACHABLE (${f.etcd_error || "?"})`) +
      `; applied revision ${f.applied_revision ?? "none"}` +
      (f.applied_hash ? ` (${f.applied_hash})` : "");
    if (f.refused_revision) t += `; revision ${f.refused_revision} REFUSED: ${f.refused_error}`;
    text("fleet", t);
    $("fleet").className = f.refused_revision || !f.etcd_reachable ? "bad" : "ok";
  }

  const obody = $("origins").tBodies[0];
  const okeys = new Set();
  const pools = s.origin_health || [];
  let watched = 0, down = 0;
  for (const p of pools) {
    for (const o of p.origins) {
      const key = `o${p.route}-${o.addr}`;
      okeys.add(key);
      if (p.watched) watched++;
      if (o.state === "down") down++;
      const state = o.state + (o.slow_start_pct != null ? ` (slow start ${o.slow_start_pct}%)` : "");
      const last = o.last_check ? o.last_check + (o.last_check_ago_ms != null ? ` ${duration(o.last_check_ago_ms)} ago` : "") : "-";
      row(obody, [
        { v: p.route, cls: "l" }, { v: o.addr, cls: "l", name: "addr" },
        { v: p.watched ? state : "unwatched", cls: "l " + (o.state === "down" ? "bad" : p.watched ? "ok" : "muted"), name: "state" },
        { v: o.why, cls: "l" }, { v: last, cls: "l" }, o.ejections,
        { v: p.balance + (p.check ? ", " + p.check : ""), cls: "l" },
      ], key);
    }
  }
  prune(obody, okeys);
  text("origin-health", s.origin_health == null
    ? "not reachable: the dataplane did not answer"
    : watched === 0
      ? "no route has [route.health]: origins are not watched"
      : `${down} of ${watched} watched origins down`);
  $("origin-health").className = down > 0 ? "bad" : "muted";

  const hbody = $("history").tBodies[0];
  const hkeys = new Set();
  s.history.forEach((h, i) => {
    const key = `h${h.at}-${h.version}-${h.source}-${i}`;
    hkeys.add(key);
    row(hbody, [
      { v: new Date(h.at * 1000).toLocaleTimeString(), cls: "l" }, h.version ?? "-",
      { v: h.source, cls: "l" },
      { v: h.outcome + (h.error ? ": " + h.error : ""), cls: "l " + (h.outcome === "refused" ? "bad" : "") },
    ], key);
  });
  prune(hbody, hkeys);

  previous = { time_ms: s.time_ms, workers: Object.fromEntries(s.workers.map((w) => [w.index, w])) };
}

async function refresh() {
  try {
    const response = await fetch("/status.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
  } catch (e) {
    text("error", `cannot load /status.json: ${e.message}`);
  } finally {
    setTimeout(refresh, period);
  }
}

refresh();

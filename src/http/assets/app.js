// tidegate status page: polls /api/status (every 2 s) and /api/history (every 5 s) and
// draws what they say. Plain JS, no libraries, nothing fetched from elsewhere. Values are
// written with textContent only, so nothing the daemon reports is parsed as HTML.
"use strict";

(function () {
  var STATUS_EVERY_MS = 2000;
  var HISTORY_EVERY_MS = 5000;
  var COLORS = ["#1f6feb", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285", "#5c940d"];
  var SVG_NS = "http://www.w3.org/2000/svg";

  function $(id) { return document.getElementById(id); }
  function setText(id, text) { var el = $(id); if (el) el.textContent = text; }

  function fmtInt(n) {
    if (n === null || n === undefined) return "–";
    return Math.round(n).toLocaleString("en-US");
  }
  function fmtRate(r) {
    if (r === null || r === undefined) return "–";
    return r >= 100 ? fmtInt(r) : r.toFixed(1);
  }
  function fmtBytes(b) {
    if (b === null || b === undefined) return "–";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return (i === 0 ? b : b.toFixed(1)) + " " + units[i];
  }
  function fmtAge(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return s.toFixed(0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }
  function two(n) { return (n < 10 ? "0" : "") + n; }
  function fmtClock(ms) {
    var d = new Date(ms);
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }
  // A date in the browser's time zone: 2026-12-21 14:05.
  function fmtDate(ms) {
    var d = new Date(ms);
    return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + " " +
      two(d.getHours()) + ":" + two(d.getMinutes());
  }
  function fmtByteRate(r) {
    return r === null || r === undefined ? "–/s" : fmtBytes(Math.round(r)) + "/s";
  }

  // The second row of an upstream on a constrained uplink: each lane's rate on the wire
  // and the age of the newest reading it delivered, the limit, the budget, the window and
  // why the backlog waits (the lines of `tidegate status`).
  function uplinkRow(u) {
    var x = u.uplink;
    var tr = document.createElement("tr");
    tr.className = "uplink";
    tr.setAttribute("data-uplink", u.name);
    var td = document.createElement("td");
    td.colSpan = 7;
    tr.appendChild(td);
    function part(cls, label, text) {
      var span = document.createElement("span");
      span.className = "part " + cls;
      var b = document.createElement("b");
      b.textContent = label;
      span.appendChild(b);
      span.appendChild(document.createTextNode(" " + text));
      td.appendChild(span);
    }
    function lane(l, newest) {
      return fmtByteRate(l.rate_bytes_per_second) + ", " +
        (l.newest_delivered_age_ms === null || l.newest_delivered_age_ms === undefined
          ? "nothing delivered yet" : newest + " " + fmtAge(l.newest_delivered_age_ms / 1000) + " ago");
    }
    part("lane-backlog", "backlog", lane(x.lanes.backlog, "newest delivered"));
    if (x.lanes.live) {
      var live = lane(x.lanes.live, "newest") + (x.live_active ? "" : " (idle)");
      if (x.live_urgent_total > 0) live += ", " + fmtInt(x.live_urgent_total) + " urgent";
      if (x.live_skipped_total > 0) live += ", " + fmtInt(x.live_skipped_total) + " skipped";
      part("lane-live", "live", live);
    }
    if (x.bandwidth) part("limit", "limit", fmtBytes(x.bandwidth) + "/s");
    if (x.budget) {
      var b = x.budget;
      var text = fmtBytes(b.used) + " of " + fmtBytes(b.limit) + " used, " + fmtBytes(b.left) + " left";
      if (b.spent) text += ", spent: backlog paused until " + fmtDate(b.period_end_ms);
      else if (b.exhaustion_ms) text += ", runs out ~" + fmtDate(b.exhaustion_ms);
      part("budget" + (b.spent ? " spent" : ""), "budget", text);
    }
    if (x.window) part("window", "window", x.window.text);
    if (x.backlog_held) part("held", "backlog", x.backlog_held);
    return tr;
  }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function renderStatus(s) {
    document.title = "tidegate " + s.gateway;
    setText("gateway", s.gateway + " · v" + s.version);
    var badge = $("health");
    badge.textContent = s.healthy ? "healthy" : "unhealthy";
    badge.className = "badge " + (s.healthy ? "ok" : "bad");
    var problems = $("problems");
    problems.textContent = "";
    s.problems.forEach(function (p) {
      var li = document.createElement("li");
      li.textContent = p;
      problems.appendChild(li);
    });
    var warnings = $("warnings");
    warnings.textContent = "";
    (s.warnings || []).forEach(function (w) {
      var li = document.createElement("li");
      li.textContent = "warning: " + w;
      warnings.appendChild(li);
    });
    setText("uptime", fmtAge((s.now_ms - s.started_ms) / 1000));
    setText("updated", fmtClock(s.now_ms));
    setText("ingest-rate", fmtRate(s.ingest.per_s));
    setText("appended-total", fmtInt(s.journal.appended_total));
    setText("rejected-total", fmtInt(s.journal.rejected_full_total));
    setText("dropped-total", fmtInt(s.journal.dropped_full_total));
    setText("journal-records", fmtInt(s.journal.records));
    setText("journal-bytes", fmtBytes(s.journal.bytes_held));
    setText("journal-max", fmtBytes(s.journal.max_size));
    // The resolution of the history held, once on_full = "thin" has thinned some of it.
    var resolution = $("journal-resolution");
    if (resolution && s.journal.resolution) {
      resolution.textContent = "thinned: " + s.journal.resolution;
      resolution.hidden = false;
    } else if (resolution) {
      resolution.hidden = true;
    }
    setText("mqtt-connections", fmtInt(s.ingest.mqtt_connections));

    var held = s.journal.records || 0;
    var body = $("upstreams");
    if (s.upstreams.length > 0) {
      body.textContent = "";
      s.upstreams.forEach(function (u) {
        var tr = document.createElement("tr");
        tr.setAttribute("data-upstream", u.name);
        cell(tr, u.name + " (" + u.kind + ")");
        var state = cell(tr, "", "connected");
        var dot = document.createElement("span");
        dot.className = "dot" + (u.connected ? " on" : "");
        state.appendChild(dot);
        state.appendChild(document.createTextNode(u.connected ? "connected" : "not connected"));
        var bl = cell(tr, "", "backlog");
        var bar = document.createElement("span");
        bar.className = "bar";
        var fill = document.createElement("span");
        // The bytes the unsent readings take against journal.max_size, as in `tidegate
        // status` (status.rs, backlog_share): a full bar is a journal full of readings
        // this upstream has not had, where on_full starts to act.
        var cap = s.journal.max_size || 0;
        var unsent = held > 0 && u.backlog ? (s.journal.bytes_held || 0) * Math.min(1, u.backlog / held) : 0;
        var share = cap > 0 ? Math.min(1, unsent / cap) : 0;
        bar.title = "unsent: about " + fmtBytes(unsent) + ", " + (share * 100).toFixed(1) +
          " % of journal.max_size (" + fmtBytes(cap) + "); a full bar is a full journal";
        bar.setAttribute("data-share", share.toFixed(6));
        fill.style.width = (share * 100).toFixed(1) + "%";
        bar.appendChild(fill);
        bl.appendChild(bar);
        bl.appendChild(document.createTextNode(fmtInt(u.backlog)));
        cell(tr, fmtAge(u.oldest_unsent_age_s), "num oldest");
        cell(tr, fmtRate(u.sent_per_s), "num sent-rate");
        cell(tr, fmtInt(u.sent_total), "num sent-total");
        cell(tr, fmtInt(u.failures_total), "num failures");
        body.appendChild(tr);
        if (u.uplink) {
          tr.className = "has-uplink";
          body.appendChild(uplinkRow(u));
        }
      });
    }
    var inputs = $("inputs");
    inputs.textContent = "";
    s.ingest.inputs.forEach(function (i) {
      var tr = document.createElement("tr");
      cell(tr, i.source);
      cell(tr, i.input);
      cell(tr, fmtInt(i.received_total), "num");
      cell(tr, fmtInt(i.rejected_total), "num");
      inputs.appendChild(tr);
    });
  }

  // One line chart: series = [{name, points: [[t_ms, value|null], ...]}], drawn into `svg`
  // at its width and 180 px high; the x axis is the last hour ending now.
  function drawChart(svgId, legendId, series, nowMs, hourMs) {
    var svg = $(svgId);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    // Drawn at the element's own pixel size, so text is never stretched.
    var W = Math.max(200, Math.round(svg.getBoundingClientRect().width) || 600), H = 180;
    var left = 46, right = 8, top = 8, bottom = 20;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var max = 0;
    series.forEach(function (s) {
      s.points.forEach(function (p) { if (p[1] !== null && p[1] > max) max = p[1]; });
    });
    max = max > 0 ? niceCeil(max) : 1;
    var t0 = nowMs - hourMs;
    function x(t) { return left + (W - left - right) * Math.max(0, (t - t0)) / hourMs; }
    function y(v) { return top + (H - top - bottom) * (1 - v / max); }
    function el(name, attrs, text) {
      var e = document.createElementNS(SVG_NS, name);
      Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
      if (text !== undefined) e.textContent = text;
      svg.appendChild(e);
      return e;
    }
    [0, 0.5, 1].forEach(function (f) {
      var v = max * f;
      el("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), "class": "grid" });
      el("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end" }, fmtRate(v));
    });
    [1, 0.75, 0.5, 0.25, 0].forEach(function (f) {
      var ago = hourMs * f;
      var label = f === 0 ? "now" : (ago >= 60000 ? "-" + Math.round(ago / 60000) + " min" : "-" + Math.round(ago / 1000) + " s");
      el("text", { x: x(nowMs - ago), y: H - 4, "text-anchor": f === 1 ? "start" : (f === 0 ? "end" : "middle") }, label);
    });
    var legend = $(legendId);
    legend.textContent = "";
    series.forEach(function (s, i) {
      var color = COLORS[i % COLORS.length];
      var d = "", pen = false;
      s.points.forEach(function (p) {
        if (p[1] === null || p[0] < t0) { pen = false; return; }
        d += (pen ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1);
        pen = true;
      });
      if (d) el("path", { d: d, fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round" });
      var item = document.createElement("span");
      var swatch = document.createElement("i");
      swatch.style.background = color;
      item.appendChild(swatch);
      var last = s.points.length ? s.points[s.points.length - 1][1] : null;
      item.appendChild(document.createTextNode(s.name + " " + fmtRate(last)));
      legend.appendChild(item);
    });
  }

  function niceCeil(v) {
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  function renderHistory(h) {
    var nowMs = Date.now();
    var samples = h.samples;
    // The x axis spans what the history holds: from 5 minutes (just after start) up to
    // the full hour, so a fresh daemon's first samples are not squeezed into a corner.
    var fullMs = h.capacity * h.interval_ms;
    var heldMs = samples.length ? nowMs - samples[0].t_ms : 0;
    var hourMs = Math.min(fullMs, Math.max(5 * 60000, heldMs));
    drawChart("chart-ingest", "legend-ingest",
      [{ name: "ingest", points: samples.map(function (s) { return [s.t_ms, s.ingest_per_s]; }) }], nowMs, hourMs);
    // Samples name their upstreams: a reload may add or remove some mid-hour.
    function find(s, name) {
      for (var i = 0; i < s.upstreams.length; i++) if (s.upstreams[i].name === name) return s.upstreams[i];
      return null;
    }
    drawChart("chart-forward", "legend-forward", h.upstreams.map(function (name) {
      return { name: name, points: samples.map(function (s) { var u = find(s, name); return [s.t_ms, u ? u.sent_per_s : null]; }) };
    }), nowMs, hourMs);
    drawChart("chart-backlog", "legend-backlog", h.upstreams.map(function (name) {
      return { name: name, points: samples.map(function (s) {
        var u = find(s, name);
        return [s.t_ms, u && u.backlog !== null && u.backlog !== undefined ? u.backlog : null];
      }) };
    }), nowMs, hourMs);
    document.body.setAttribute("data-history-samples", String(samples.length));
  }

  var refreshes = 0;
  function getJson(path, onOk) {
    // An unreachable daemon is shown on the page; it is not a script error.
    return fetch(path, { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error(path + ": HTTP " + r.status); return r.json(); })
      .then(function (j) { $("offline").style.display = "none"; onOk(j); })
      .catch(function () { $("offline").style.display = "block"; });
  }
  function pollStatus() {
    getJson("/api/status", function (s) {
      renderStatus(s);
      refreshes += 1;
      document.body.setAttribute("data-refreshes", String(refreshes));
    }).then(function () { setTimeout(pollStatus, STATUS_EVERY_MS); });
  }
  function pollHistory() {
    getJson("/api/history", renderHistory).then(function () { setTimeout(pollHistory, HISTORY_EVERY_MS); });
  }
  pollStatus();
  pollHistory();
})();

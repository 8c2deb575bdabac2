// PM2.5 dashboard: no framework, no CDN. Renders /api/stations and /api/stations/{id}; live updates
// through server-sent events (/api/events), with short polling as the fallback.
"use strict";

const CATS = [
  ["Good", "good"], ["Moderate", "moderate"], ["Unhealthy for Sensitive Groups", "usg"],
  ["Unhealthy", "unhealthy"], ["Very Unhealthy", "very"], ["Hazardous", "hazardous"],
];
const catClass = (name) => "cat-" + ((CATS.find((c) => c[0] === name) || [null, "good"])[1]);
const chip = (name, text) => {
  const s = document.createElement("span");
  s.className = "chip " + catClass(name);
  s.textContent = text || name;  // the category name is always shown: never colour alone
  return s;
};
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
};
const hhmm = (iso) => iso.slice(5, 16).replace("T", " ") + "Z";
const SVGNS = "http://www.w3.org/2000/svg";
const svgEl = (tag, attrs) => {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};
const t = (iso) => Date.parse(iso);

function chart(series, opts) {
  // series: [{cls, points: [[time_ms, value]], band: [[time, lo, hi]]}]
  const W = opts.width || 280, H = opts.height || 90, P = opts.pad || 4, B = opts.bottom || 0;
  let xs = [], ys = [0];
  for (const s of series) {
    for (const p of s.points || []) { xs.push(p[0]); ys.push(p[1]); }
    for (const b of s.band || []) { xs.push(b[0]); ys.push(b[2]); }
  }
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.label || "chart" });
  if (!xs.length) return svg;
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || x0 + 1, y1 = Math.max(...ys) * 1.05 || 1;
  const X = (v) => P + ((v - x0) / Math.max(x1 - x0, 1)) * (W - 2 * P);
  const Y = (v) => H - B - P - (v / y1) * (H - B - 2 * P);
  svg.append(svgEl("line", { class: "axis", x1: P, x2: W - P, y1: Y(0), y2: Y(0) }));
  if (opts.grid) {
    for (const g of [50, 100, 150, 200, 300, 500]) {
      if (g > y1) break;
      svg.append(svgEl("line", { class: "axis", x1: P, x2: W - P, y1: Y(g), y2: Y(g) }));
      const lbl = svgEl("text", { x: P + 2, y: Y(g) - 2 }); lbl.textContent = g; svg.append(lbl);
    }
  }
  if (opts.now) svg.append(svgEl("line", { class: "now", x1: X(opts.now), x2: X(opts.now), y1: P, y2: H - B - P }));
  for (const s of series) {
    if (s.band && s.band.length) {
      const top = s.band.map((b) => `${X(b[0])},${Y(b[2])}`), bot = s.band.slice().reverse().map((b) => `${X(b[0])},${Y(b[1])}`);
      svg.append(svgEl("polygon", { class: "band", points: top.concat(bot).join(" ") }));
    }
    if (s.points && s.points.length) {
      // break the line where hours are missing
      let d = "", prev = null;
      for (const [x, y] of s.points) {
        if (y === null || y === undefined) { prev = null; continue; }
        d += (prev !== null && x - prev <= 3600e3 * 1.5 ? "L" : "M") + X(x).toFixed(1) + "," + Y(y).toFixed(1);
        prev = x;
      }
      svg.append(svgEl("path", { class: s.cls, d }));
    }
  }
  if (opts.axisLabels) {
    for (const [v, txt] of [[x0, hhmm(new Date(x0).toISOString())], [x1, hhmm(new Date(x1).toISOString())]]) {
      const lbl = svgEl("text", { x: Math.min(Math.max(X(v) - 40, 0), W - 90), y: H - 2 }); lbl.textContent = txt; svg.append(lbl);
    }
  }
  return svg;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(url + " " + r.status);
  return r.json();
}

async function renderOverview() {
  const data = await getJSON("/api/stations");
  const list = document.getElementById("stations");
  document.getElementById("empty").hidden = data.stations.length > 0;
  list.replaceChildren(...data.stations.map((s) => {
    const f = s.forecast;
    const a = el("a", { href: "/station/" + encodeURIComponent(s.station_id), "data-station": s.station_id });
    a.append(el("h2", {}, s.station_id));
    const r = s.latest_reading;
    a.append(el("div", { class: "row" },
      el("span", {}, r ? `Now ${r.pm25.toFixed(0)} µg/m³` : "No reading yet"),
      r ? chip(r.aqi_us_category) : ""));
    if (f) {
      const band = f.horizons.map((h) => [t(h.target_time), h.pm25_lo, h.pm25_hi]);
      const pts = f.horizons.map((h) => [t(h.target_time), h.pm25]);
      a.append(chart([{ cls: "fc", points: pts, band }], { label: `Next 24 h forecast for ${s.station_id}` }));
      const w = s.worst_next_24h;
      a.append(el("div", { class: "row" }, el("span", { class: "muted" }, `Worst next 24 h: +${w.h} h (${hhmm(w.target_time)})`), chip(w.aqi_us_category)));
      a.append(el("div", { class: "muted", "data-issued": f.issued_at }, `Issued ${hhmm(f.issued_at)} · ${f.model_version}`));
    }
    if (s.skill_1h && s.skill_1h.n) {
      a.append(el("div", { class: "muted" }, `1 h RMSE ${s.skill_1h.rmse.toFixed(1)} vs persistence ${s.skill_1h.persistence_rmse.toFixed(1)} (${s.skill_1h.n} pairs)`));
    }
    return el("li", { class: "card" }, a);
  }));
  status(`${data.stations.length} stations · updated ${new Date().toLocaleTimeString()}`);
}

async function renderStation() {
  const id = decodeURIComponent(location.pathname.split("/").pop());
  const s = await getJSON("/api/stations/" + encodeURIComponent(id));
  document.title = `PM2.5 — ${s.station_id}`;
  document.getElementById("title").textContent = s.station_id;
  const sum = document.getElementById("summary");
  sum.replaceChildren();
  if (s.latest_reading) {
    sum.append(`Latest reading ${s.latest_reading.pm25.toFixed(0)} µg/m³ at ${hhmm(s.latest_reading.timestamp)} `, chip(s.latest_reading.aqi_us_category));
  }
  if (s.worst_next_24h) sum.append(" · worst in the next 24 h: ", chip(s.worst_next_24h.aqi_us_category), ` at +${s.worst_next_24h.h} h`);
  const series = [{ cls: "obs", points: s.readings.map((r) => [t(r.timestamp), r.pm25]) }];
  for (const lead of ["1", "6", "24"]) {
    series.push({ cls: "lead" + lead, points: (s.past_forecasts[lead] || []).map((p) => [t(p.target_time), p.pm25]) });
  }
  let now = null;
  if (s.forecast) {
    now = t(s.forecast.issued_at);
    series.push({ cls: "fc", points: s.forecast.horizons.map((h) => [t(h.target_time), h.pm25]),
                  band: s.forecast.horizons.map((h) => [t(h.target_time), h.pm25_lo, h.pm25_hi]) });
  }
  const fig = document.getElementById("chart");
  fig.replaceChildren(chart(series, { width: 1000, height: 320, pad: 8, bottom: 14, grid: true, axisLabels: true, now,
                                      label: `Measured and forecast PM2.5 at ${s.station_id}` }));
  fig.setAttribute("data-issued", s.forecast ? s.forecast.issued_at : "");
  const tbody = document.querySelector("#next tbody");
  tbody.replaceChildren(...(s.forecast ? s.forecast.horizons : []).map((h) => el("tr", {},
    el("td", {}, hhmm(h.target_time)), el("td", {}, "+" + h.h), el("td", {}, h.pm25.toFixed(1)),
    el("td", {}, `${h.pm25_lo.toFixed(0)}–${h.pm25_hi.toFixed(0)}`), el("td", {}, String(h.aqi_us)),
    el("td", {}, chip(h.aqi_us_category)))));
  const skill = document.querySelector("#skill tbody");
  skill.replaceChildren(...(s.skill || []).map((k) => el("tr", {},
    el("td", {}, `+${k.h} h`), el("td", {}, String(k.n)), el("td", {}, k.rmse.toFixed(1)),
    el("td", {}, k.persistence_rmse.toFixed(1)), el("td", {}, k.mae.toFixed(1)),
    el("td", {}, k.n ? (k.rmse < k.persistence_rmse ? "yes" : "no") : "—"))));
  const loc = document.getElementById("location");
  if (s.location) {
    const deg = (v, pos, neg) => `${Math.abs(v).toFixed(3)}° ${v >= 0 ? pos : neg}`;
    loc.textContent = `${s.location.name} · ${deg(s.location.latitude, "N", "S")}, ${deg(s.location.longitude, "E", "W")}` +
      ` · network ${s.location.network}`;
  }
  document.querySelector("#neighbours tbody").replaceChildren(...(s.neighbours || []).map((n) => el("tr", {},
    el("td", {}, el("a", { href: "/station/" + encodeURIComponent(n.station_id) }, `${n.station_id} (${n.name})`)),
    el("td", {}, `${n.distance_km.toFixed(1)} km`), el("td", {}, n.direction),
    el("td", {}, n.latest_reading ? n.latest_reading.pm25.toFixed(0) : "—"),
    el("td", {}, n.latest_reading ? chip(n.latest_reading.aqi_us_category) : "—"),
    el("td", {}, n.latest_reading ? hhmm(n.latest_reading.timestamp) : "—"))));
  const a = s.adaptation || {};
  const pct = (v) => (v === undefined ? "—" : `${Math.round(v * 100)} %`);
  document.querySelector("#adaptation tbody").replaceChildren(...(a.horizons || []).map((h, i) => el("tr", {},
    el("td", {}, `+${h} h`), el("td", {}, pct(a.model[i])), el("td", {}, pct(a.persistence[i])),
    el("td", {}, pct(a.seasonal_24h[i])), el("td", {}, pct(a.level_30d[i])),
    el("td", {}, pct((a.model_alone || [])[i])), el("td", {}, String(a.pairs[i])))));
  status(`issued ${s.forecast ? hhmm(s.forecast.issued_at) : "—"} · updated ${new Date().toLocaleTimeString()}`);
}

function status(text) { const s = document.getElementById("status"); if (s) s.textContent = text; }

function legend() {
  const ul = document.querySelector("header .legend");
  if (ul) ul.replaceChildren(...CATS.map(([name]) => el("li", {}, chip(name))));
}

const page = document.body.dataset.page;
const render = page === "station" ? renderStation : renderOverview;
let pending = false;
async function refresh() {
  if (pending) return;
  pending = true;
  try { await render(); } catch (e) { status("error: " + e.message); } finally { pending = false; }
}
legend();
refresh();
if (window.EventSource) {
  const es = new EventSource("/api/events");
  es.addEventListener("update", refresh);
  es.onerror = () => status("reconnecting…");
} else {
  setInterval(refresh, 3000);
}

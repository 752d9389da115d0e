// The web view: draws the panels the server returns (the dashboards' own SQL) with plotly.js and
// refreshes every 10 s. Panel elements carry their data, so a browser test can compare it with the database.
"use strict";

const REFRESH_MS = 10000;
const state = { dashboards: [], ranges: [], symbols: [], uid: null, range: "1h", selected: new Set() };
const layoutBase = {
  paper_bgcolor: "#181b1f", plot_bgcolor: "#181b1f", font: { color: "#d8d9da", size: 11 },
  margin: { l: 56, r: 12, t: 8, b: 32 }, showlegend: true, legend: { orientation: "h", y: -0.2 },
  xaxis: { gridcolor: "#2c3235" },
  // plain numbers, never SI prefixes (plotly's default draws BTC's 97,000.4 as "97.0004k")
  yaxis: { gridcolor: "#2c3235", tickformat: ",.10~r", hoverformat: ",.10~r" },
};
const config = { displayModeBar: false, responsive: true };

function panelId(section, key) { return `panel-${section || "all"}-${key}`; }

function traces(panel) {
  const cols = panel.columns, rows = panel.rows;
  if (panel.type === "stat") {
    const v = rows.length ? rows[0][0] : 0;
    return [{ type: "indicator", mode: "number", value: v, number: { font: { size: 48, color: v > 0 ? "#f2495c" : "#73bf69" } } }];
  }
  if (panel.type === "table") {
    const fmt = (v, i) => cols[i] === "time" ? new Date(v).toISOString().replace("T", " ").slice(0, 19)
      : typeof v === "number" ? v.toLocaleString("en-US", { maximumSignificantDigits: 8 }) : v;
    return [{ type: "table", header: { values: cols, fill: { color: "#22252b" }, line: { color: "#2c3235" }, align: "left" },
              cells: { values: cols.map((_, i) => rows.map(r => fmt(r[i], i))), fill: { color: "#181b1f" }, line: { color: "#2c3235" }, align: "left" } }];
  }
  const x = rows.map(r => new Date(r[0]));
  return cols.slice(1).map((name, i) => panel.type === "bargauge"
    ? { type: "bar", name, x, y: rows.map(r => r[i + 1]), marker: { color: "#5794f2" } }
    : { type: "scatter", mode: "lines+markers", connectgaps: false, marker: { size: 4 }, name,
        ...withGaps(x, rows.map(r => r[i + 1])) });
}

// Missing windows drawn as gaps, not as a line across them: a null point wherever two rows are further
// apart than 1.5 times the series' usual step (its smallest one).
function withGaps(x, y) {
  let step = Infinity;
  for (let i = 1; i < x.length; i++) if (x[i] - x[i - 1] > 0) step = Math.min(step, x[i] - x[i - 1]);
  const gx = [], gy = [];
  for (let i = 0; i < x.length; i++) {
    if (i > 0 && x[i] - x[i - 1] > 1.5 * step) { gx.push(new Date((+x[i] + +x[i - 1]) / 2)); gy.push(null); }
    gx.push(x[i]); gy.push(y[i]);
  }
  return { x: gx, y: gy };
}

function draw(body) {
  const main = document.getElementById("dashboard");
  const wanted = body.sections.map(s => s.symbol || "all").join(",") + "|" + body.uid;
  if (main.dataset.layout !== wanted) {  // build the grid once per dashboard/selection, then update in place
    main.innerHTML = "";
    for (const section of body.sections) {
      const el = document.createElement("section");
      el.innerHTML = `<h2>${section.symbol || body.symbols.join(", ")}</h2><div class="grid"></div>`;
      for (const p of section.panels) {
        const div = document.createElement("div");
        div.className = `panel ${p.type}`;
        div.style.gridColumn = `span ${Math.min(24, p.width)}`;  // Grafana's 24-column grid
        div.title = p.description || "";
        div.innerHTML = `<h3>${p.title}</h3><div class="chart" id="${panelId(section.symbol, p.key)}"></div>`;
        el.querySelector(".grid").appendChild(div);
      }
      main.appendChild(el);
    }
    main.dataset.layout = wanted;
  }
  for (const section of body.sections) {
    for (const p of section.panels) {
      const el = document.getElementById(panelId(section.symbol, p.key));
      const layout = Object.assign({}, layoutBase, p.type === "stat" || p.type === "table" ? { margin: { l: 4, r: 4, t: 4, b: 4 } } : {});
      Plotly.react(el, traces(p), layout, config);
      el.dataset.rows = JSON.stringify(p.rows);
      el.dataset.columns = JSON.stringify(p.columns);
    }
  }
  const firing = document.getElementById("firing");
  firing.replaceChildren(...body.firing.map(a => {  // text from the database: never parsed as HTML
    const span = document.createElement("span");
    span.className = "alert";
    span.textContent = `${a.rule} ${a.symbol} since ${new Date(a.since).toISOString().slice(11, 19)}`;
    return span;
  }));
  document.body.dataset.updated = String(Date.now());
  document.body.dataset.dashboard = body.uid;
}

async function refresh() {
  const status = document.getElementById("status");
  const symbols = [...state.selected].join(",");
  try {
    const r = await fetch(`/api/dashboards/${state.uid}?range=${state.range}&symbols=${encodeURIComponent(symbols)}`);
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    draw(body);
    status.className = "";
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    status.className = "error";
    status.textContent = `error: ${e.message}`;
  }
}

function controls() {
  const tabs = document.getElementById("tabs");
  tabs.innerHTML = "";
  for (const d of state.dashboards) {
    const b = document.createElement("button");
    b.textContent = d.title;
    b.dataset.uid = d.uid;
    b.className = d.uid === state.uid ? "active" : "";
    b.onclick = () => { state.uid = d.uid; location.hash = d.uid; controls(); refresh(); };
    tabs.appendChild(b);
  }
  const range = document.getElementById("range");
  range.innerHTML = state.ranges.map(r => `<option ${r === state.range ? "selected" : ""}>${r}</option>`).join("");
  range.onchange = () => { state.range = range.value; refresh(); };
  const syms = document.getElementById("symbols");
  syms.innerHTML = "";
  for (const s of state.symbols) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" ${state.selected.has(s) ? "checked" : ""}> ${s} `;
    label.querySelector("input").onchange = (e) => { e.target.checked ? state.selected.add(s) : state.selected.delete(s); refresh(); };
    syms.appendChild(label);
  }
}

async function start() {
  const meta = await (await fetch("/api/dashboards")).json();
  Object.assign(state, { dashboards: meta.dashboards, ranges: meta.ranges, symbols: meta.symbols });
  const params = new URLSearchParams(location.search);
  state.range = params.get("range") || state.range;
  state.selected = new Set(params.get("symbols") ? params.get("symbols").split(",") : meta.symbols);
  const hash = location.hash.slice(1);
  state.uid = meta.dashboards.some(d => d.uid === hash) ? hash : meta.dashboards[0].uid;
  controls();
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

start();

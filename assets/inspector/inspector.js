// The inspector page: polls /admin/api/stats every second, charts the gauges of
// /admin/api/gauges (fetching only the samples it has not got), lists connections (with a button
// that disconnects a socket id) and topics, and shows the live frames of one watched topic.
// Actions are POSTs carrying the session's CSRF token.
"use strict"
const csrf = document.querySelector('meta[name="csrf-token"]').content
const $ = id => document.getElementById(id)
const SVG = "http://www.w3.org/2000/svg"
let last = null
let watched = null
let after = 0

// The charted gauges: the sample's field, the chart's title, how a value reads, and whether the
// chart's floor is 0 (memory and descriptors never fall near it: their charts span min to max).
const bytes = n => n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : n < 1073741824 ? `${(n / 1048576).toFixed(1)} MiB` : `${(n / 1073741824).toFixed(2)} GiB`
const count = n => Math.round(n).toLocaleString("en")
const rate = n => `${n < 10 && n !== 0 ? n.toFixed(1) : Math.round(n).toLocaleString("en")}/s`
const GAUGES = [
  {key: "connections", title: "Connections", format: count, zero: true},
  {key: "deliveries_per_second", title: "Deliveries per second", format: rate, zero: true},
  {key: "resident_bytes", title: "Resident memory", format: bytes, zero: false},
  {key: "queued_bytes", title: "Queued bytes", format: bytes, zero: true},
  {key: "presence_entries", title: "Presence entries", format: count, zero: true},
  {key: "tasks", title: "Tasks", format: count, zero: true},
  {key: "open_fds", title: "Open descriptors", format: count, zero: false},
]
// What the page has of the window: samples oldest first, the last one's time, the server's period.
const sampled = {samples: [], after: 0, period_ms: null, window_ms: 15 * 60 * 1000}

function cell(text){ const td = document.createElement("td"); td.textContent = text; return td }

function button(label, onclick){
  const b = document.createElement("button")
  b.type = "button"
  b.textContent = label
  b.addEventListener("click", onclick)
  return b
}

async function post(path, body){
  const r = await fetch(path, {method: "POST", headers: {"content-type": "application/json", "x-csrf-token": csrf}, body: JSON.stringify(body || {})})
  if(!r.ok){ $("problem").textContent = `${path}: HTTP ${r.status}` }
  return r
}

async function refresh(){
  const r = await fetch("/admin/api/stats", {cache: "no-store"})
  if(r.status === 401 || r.status === 403){ location.href = "/admin/sign-in"; return }
  if(!r.ok){ $("problem").textContent = `stats: HTTP ${r.status}`; return }
  const s = await r.json()
  const now = performance.now()
  $("count-connections").textContent = s.connections.length
  $("count-topics").textContent = s.topics.length
  $("count-overflows").textContent = s.queue_overflows
  if(last){ $("count-rate").textContent = Math.round((s.deliveries - last.deliveries) * 1000 / (now - last.at)) }
  last = {deliveries: s.deliveries, at: now}
  $("connections").replaceChildren(...s.connections.map(c => {
    const tr = document.createElement("tr")
    tr.dataset.socketId = c.socket_id || ""
    tr.append(cell(c.id), cell(c.transport), cell(c.serializer), cell(c.socket_id || "(none)"))
    const td = document.createElement("td")
    if(c.socket_id){ td.append(button(`Disconnect ${c.socket_id}`, () => post("/admin/api/disconnect", {socket_id: c.socket_id}))) }
    tr.append(td)
    return tr
  }))
  $("topics").replaceChildren(...s.topics.map(t => {
    const tr = document.createElement("tr")
    tr.append(cell(t.topic), cell(t.subscribers), cell(t.presence.join(", ")))
    const td = document.createElement("td")
    td.append(button(`Watch ${t.topic}`, () => watch(t.topic)))
    tr.append(td)
    return tr
  }))
  // Backends of proxied channels (none unless channels are declared).
  $("backends-section").hidden = s.backends.length === 0
  $("backends").replaceChildren(...s.backends.map(b => {
    const tr = document.createElement("tr")
    tr.append(cell(b.origin), cell(b.in_flight), cell(b.waiting), cell(b.circuit_open ? "open" : "closed"), cell(b.failures_in_a_row))
    return tr
  }))
  $("backend-requests").textContent = Object.entries(s.backend_requests).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(", ") || "none yet"
  // Change capture's slot (none unless --cdc-tables).
  const cdc = s.change_capture
  $("cdc-section").hidden = !cdc
  if(cdc){
    $("cdc-reading").textContent = cdc.reading ? "reads" : "does not read (another node does)"
    $("cdc-lag").textContent = `${cdc.slot_lag_bytes.toLocaleString()} bytes`
    $("cdc-changes").textContent = cdc.changes.toLocaleString()
    $("cdc-drops").textContent = cdc.slot_drops
  }
  $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`
  await gauges()
}

function svg(name, attrs){
  const el = document.createElementNS(SVG, name)
  for(const [k, v] of Object.entries(attrs)){ el.setAttribute(k, v) }
  return el
}

function span(ms){
  const s = Math.round(ms / 1000)
  return s < 60 ? `${s} s` : `${Math.round(s / 60)} min`
}

// One figure per gauge, made once: title, latest value, the sparkline, min and max of the window.
function gaugeFigures(){
  $("gauges").replaceChildren(...GAUGES.map(g => {
    const fig = document.createElement("figure")
    fig.className = "gauge"
    fig.dataset.gauge = g.key
    const caption = document.createElement("figcaption")
    const title = document.createElement("span")
    title.textContent = g.title
    const now = document.createElement("b")
    now.className = "gauge-now"
    now.textContent = "–"
    caption.append(title, now)
    const chart = svg("svg", {role: "img", "aria-label": `${g.title}: no samples yet`, viewBox: "0 0 200 48", preserveAspectRatio: "none", class: "gauge-chart"})
    chart.append(svg("polygon", {class: "gauge-area", points: ""}), svg("polyline", {class: "gauge-line", points: ""}))
    const range = document.createElement("p")
    range.className = "meta gauge-range"
    fig.append(caption, chart, range)
    return fig
  }))
}

// Draws each chart from the samples: x is time over the samples' span, y the value between the
// floor (0, or the window's min) and the window's max; a missing value (the first rate, or a
// gauge this platform does not give) leaves no point.
function drawGauges(){
  const s = sampled.samples
  const t0 = s.length ? s[0].at_ms : 0
  const t1 = s.length ? s[s.length - 1].at_ms : 0
  for(const g of GAUGES){
    const fig = $("gauges").querySelector(`[data-gauge="${g.key}"]`)
    const chart = fig.querySelector("svg")
    const points = s.filter(p => typeof p[g.key] === "number").map(p => [p.at_ms, p[g.key]])
    if(points.length === 0){
      chart.setAttribute("aria-label", `${g.title}: no samples yet`)
      delete chart.dataset.latest
      continue
    }
    const values = points.map(([, v]) => v)
    const latest = values[values.length - 1]
    const min = Math.min(...values), max = Math.max(...values)
    const floor = g.zero ? Math.min(0, min) : min
    // 2 units of margin top and bottom; a flat chart sits on its floor (0) or midway.
    const y = v => max > floor ? 46 - (v - floor) / (max - floor) * 44 : (g.zero ? 46 : 24)
    const x = t => t1 > t0 ? (t - t0) / (t1 - t0) * 200 : 200
    const xy = points.length === 1 ? [[0, y(latest)], [200, y(latest)]] : points.map(([t, v]) => [x(t), y(v)])
    const line = xy.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ")
    chart.querySelector("polyline").setAttribute("points", line)
    chart.querySelector("polygon").setAttribute("points", `${xy[0][0].toFixed(1)},48 ${line} ${xy[xy.length - 1][0].toFixed(1)},48`)
    const over = t1 > t0 ? `over the last ${span(t1 - t0)}` : "one sample"
    chart.dataset.latest = String(latest)
    chart.setAttribute("aria-label", `${g.title}: ${g.format(latest)} (min ${g.format(min)}, max ${g.format(max)}, ${over})`)
    fig.querySelector(".gauge-now").textContent = g.format(latest)
    fig.querySelector(".gauge-range").textContent = `min ${g.format(min)} · max ${g.format(max)} · ${t1 > t0 ? span(t1 - t0) : "1 sample"}`
  }
}

// Fetches the samples taken since the last one the page has, and keeps the window's worth.
async function gauges(){
  const r = await fetch(`/admin/api/gauges?after=${sampled.after}`, {cache: "no-store"})
  if(!r.ok){ $("problem").textContent = `gauges: HTTP ${r.status}`; return }
  const g = await r.json()
  sampled.period_ms = g.period_ms
  sampled.window_ms = g.window_ms
  if(g.samples.length){
    sampled.samples.push(...g.samples)
    sampled.after = g.samples[g.samples.length - 1].at_ms
    const from = sampled.after - sampled.window_ms
    sampled.samples = sampled.samples.filter(p => p.at_ms > from)
  }
  $("gauges-meta").textContent = `This process, sampled every ${g.period_ms >= 1000 ? `${g.period_ms / 1000} s` : `${g.period_ms} ms`} over the last ${span(g.window_ms)}.`
  drawGauges()
}

function watch(topic){
  watched = topic
  after = 0
  $("watch").topic.value = topic
  $("frames").textContent = `Watching ${topic}…\n`
  frames()
}

async function frames(){
  if(!watched){ return }
  const r = await fetch(`/admin/api/frames?topic=${encodeURIComponent(watched)}&after=${after}`, {cache: "no-store"})
  if(!r.ok){ return }
  const f = await r.json()
  if(f.topic !== watched){ return }
  for(const frame of f.frames){
    $("frames").textContent += `${frame.at} ${frame.event} ${JSON.stringify(frame.payload)}\n`
  }
  after = f.last
}

gaugeFigures()
$("watch").addEventListener("submit", e => { e.preventDefault(); watch($("watch").topic.value.trim()) })
$("sign-out").addEventListener("click", async () => { await post("/admin/sign-out"); location.href = "/admin/sign-in" })
refresh()
setInterval(refresh, 1000)
setInterval(frames, 500)

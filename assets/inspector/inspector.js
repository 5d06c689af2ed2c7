// The inspector page: polls /admin/api/stats every second, lists connections (with a button that
// disconnects a socket id) and topics, and shows the live frames of one watched topic. Actions
// are POSTs carrying the session's CSRF token.
"use strict"
const csrf = document.querySelector('meta[name="csrf-token"]').content
const $ = id => document.getElementById(id)
let last = null
let watched = null
let after = 0

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

$("watch").addEventListener("submit", e => { e.preventDefault(); watch($("watch").topic.value.trim()) })
$("sign-out").addEventListener("click", async () => { await post("/admin/sign-out"); location.href = "/admin/sign-in" })
refresh()
setInterval(refresh, 1000)
setInterval(frames, 500)

// Collections as a Svelte-store app uses them: join collection:<name>, take the items, apply
// `change` events, write through REST; after a reconnect, rejoin with {since} and miss nothing.
// Run by protocol_tests/tests/phoenix_js.rs against `fawkes serve`'s apps with a change log of
// 5 entries: FAWKES_APP_URL, FAWKES_MEMBER_TOKEN.

import {test} from "node:test"
import assert from "node:assert/strict"
import {Socket} from "phoenix"
import {WebSocket} from "ws"
import {disconnect, openSocket, uniqueId, waitUntil} from "../helpers.js"

const BASE = process.env.FAWKES_APP_URL
const TOKEN = process.env.FAWKES_MEMBER_TOKEN
if(!BASE || !TOKEN){ throw new Error("FAWKES_APP_URL and FAWKES_MEMBER_TOKEN are required") }

async function api(method, path, body){
  const resp = await fetch(BASE + path, {
    method,
    headers: {"authorization": `Bearer ${TOKEN}`, "content-type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await resp.text()
  return {status: resp.status, json: text ? JSON.parse(text) : null}
}

/** A live copy of a collection, the way an app store keeps one. */
function liveCollection(socket, name){
  const store = {items: new Map(), seq: null, joins: [], changes: []}
  // Params are re-read on every rejoin: after the first join, ask for what was missed.
  const channel = socket.channel(`collection:${name}`, () => store.seq === null ? {} : {since: store.seq})
  channel.on("change", change => {
    store.changes.push(change)
    assert.equal(change.seq, store.seq + 1, "changes arrive with consecutive seq")
    apply(store, change)
  })
  channel.join().receive("ok", reply => {
    store.joins.push(reply)
    if(reply.items){
      store.items = new Map(reply.items.map(r => [r.id, r]))
    } else {
      reply.changes.forEach(c => apply(store, c))
    }
    store.seq = reply.seq
  })
  return {channel, store}
}

function apply(store, {action, record, seq}){
  if(action === "delete"){ store.items.delete(record.id) } else { store.items.set(record.id, record) }
  store.seq = seq
}

function connect(t){
  const socket = new Socket(BASE.replace(/^http/, "ws") + "/socket", {transport: WebSocket, timeout: 3000, reconnectAfterMs: () => 50, rejoinAfterMs: () => 50})
  t.after(() => disconnect(socket))
  return socket
}

test("REST writes reach two phoenix.js clients as change events with consecutive seq", async t => {
  const name = `orders_${uniqueId()}`
  const a = connect(t), b = connect(t)
  await openSocket(a); await openSocket(b)
  const la = liveCollection(a, name), lb = liveCollection(b, name)
  await waitUntil(() => la.store.seq === 0 && lb.store.seq === 0, "both joined with seq 0")

  const created = await api("POST", `/api/collections/${name}/records`, {item: "tea"})
  assert.equal(created.status, 201)
  const updated = await api("PATCH", `/api/collections/${name}/records/${created.json.id}`, {item: "coffee"})
  assert.equal((await api("DELETE", `/api/collections/${name}/records/${created.json.id}`)).status, 204)
  const expected = [
    {action: "create", record: created.json, seq: 1},
    {action: "update", record: updated.json, seq: 2},
    {action: "delete", record: updated.json, seq: 3}
  ]
  await waitUntil(() => la.store.changes.length === 3 && lb.store.changes.length === 3, "three changes on both")
  assert.deepStrictEqual(la.store.changes, expected)
  assert.deepStrictEqual(lb.store.changes, expected)
})

test("a client that reconnects gets exactly the three writes it missed, or a reset past the log", async t => {
  const name = `tickets_${uniqueId()}`
  const socket = connect(t)
  await openSocket(socket)
  const live = liveCollection(socket, name)
  await waitUntil(() => live.store.seq === 0, "joined")
  const first = await api("POST", `/api/collections/${name}/records`, {n: 0})
  await waitUntil(() => live.store.seq === 1, "first change")

  await disconnect(socket)
  const missed = []
  for(let n = 1; n <= 3; n++){ missed.push((await api("POST", `/api/collections/${name}/records`, {n})).json) }
  socket.connect()
  await waitUntil(() => live.store.joins.length === 2, "rejoined")
  assert.deepStrictEqual(live.store.joins[1], {
    changes: missed.map((record, i) => ({action: "create", record, seq: i + 2})),
    seq: 4
  })
  assert.deepStrictEqual([...live.store.items.keys()].sort(), [first.json.id, ...missed.map(r => r.id)].sort())

  // Missing more than the log holds (5 changes here) gets everything, marked as a reset.
  await disconnect(socket)
  for(let n = 4; n <= 10; n++){ await api("POST", `/api/collections/${name}/records`, {n}) }
  socket.connect()
  await waitUntil(() => live.store.joins.length === 3, "rejoined again")
  const reset = live.store.joins[2]
  assert.equal(reset.reset, true)
  assert.equal(reset.seq, 11)
  assert.equal(reset.items.length, 11)
  assert.deepStrictEqual(reset.items.map(r => r.n), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
})

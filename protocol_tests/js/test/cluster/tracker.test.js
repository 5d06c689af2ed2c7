// Three `fawkes serve` nodes as replicas of one Phoenix Presence (`--presence-name`), as Elixir
// nodes of that app would be: Phoenix.Tracker's messages on `phx_presence:Elixir.Fawkes.Presence_shard0`
// over a real redis-server, phoenix.js clients on every node. The down period is Phoenix's
// default (30 s), so what happens at once is told from what waits for it. Run by
// tests/cluster.rs with FAWKES_BIN and DATABASE_URL.

import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {joinOk, openSocket, sleep, waitUntil, watchKeys} from "../helpers.js"
import {PHX_CHANNEL, api, createUser, eventually, linked, logsOf, metrics, nodes, publish, socketOn, startNode, startRedis, stopNodes} from "./nodes.js"

const TRACKER = ["--presence-name", "Fawkes.Presence", "--presence-down-after", "30"]
const startReplica = name => startNode(name, TRACKER)

const users = {}
let topic

/** A client on `node` in the room, with a Presence that saw the join's presence_state. */
async function inRoom(t, node, user){
  const socket = socketOn(t, node, user)
  await openSocket(socket)
  const channel = socket.channel(topic)
  const {presence, seen} = watchKeys(channel)
  await joinOk(channel)
  return {socket, channel, presence, events: seen}
}

const keysOf = p => p.list(k => k).sort()
const idOf = u => String(u.id)

before(async () => {
  await startRedis()
  for(const n of ["n1", "n2", "n3"]){ await startReplica(n) }
  for(const name of ["alice", "bob", "carol", "dave"]){ users[name] = createUser(name) }
  const room = (await api("n1", users.alice, "POST", "/api/channels", {name: "tracker", private: false})).json
  for(const u of [users.bob, users.carol, users.dave]){
    assert.equal((await api("n2", u, "POST", `/api/channels/${room.id}/members`, {user_id: u.id})).status, 204)
  }
  topic = `channel:${room.id}`
})

after(stopNodes)

test("the replicas link up and say so", async t => {
  await linked(t, "n1", "n2", users.alice)
  await linked(t, "n2", "n3", users.alice)
  for(const n of ["n1", "n2", "n3"]){
    assert.match(logsOf(n), new RegExp(`replica ${n} of Elixir.Fawkes.Presence on phx_presence:Elixir.Fawkes.Presence_shard0`))
  }
  // Each hears both others' heartbeats: a replica started earlier is heard at its next idle
  // heartbeat (every 15 s at this down period; Phoenix's every 16.5 s), or at its next delta.
  await eventually(() => ["n1", "n2", "n3"].every(n => (logsOf(n).match(/presence: replica n\d is up/g) || []).length >= 2),
    () => "replicas up: " + ["n1", "n2", "n3"].map(logsOf).join("\n"), 20000)
})

test("one presence list over the replicas; a leave reaches every node once", async t => {
  const a = await inRoom(t, "n1", users.alice)
  const b = await inRoom(t, "n2", users.bob)
  const c = await inRoom(t, "n3", users.carol)
  const everyone = [users.alice, users.bob, users.carol].map(idOf).sort()
  // Within two heartbeat periods (1.5 s each) and then some.
  for(const p of [a, b, c]){
    await waitUntil(() => JSON.stringify(keysOf(p.presence)) === JSON.stringify(everyone), () => `list ${keysOf(p.presence)}`, 4000)
  }
  // The same metas everywhere: one per client, keyed by its phx_ref.
  const refs = p => p.presence.list((k, {metas}) => `${k}:${metas.map(m => m.phx_ref).join(",")}`).sort()
  assert.deepStrictEqual(refs(b), refs(a))
  assert.deepStrictEqual(refs(c), refs(a))
  c.channel.leave()
  for(const p of [a, b]){
    await waitUntil(() => !keysOf(p.presence).includes(idOf(users.carol)), "carol gone", 4000)
  }
  await sleep(3000)
  for(const p of [a, b]){
    assert.deepStrictEqual(p.events.leaves.filter(k => k === idOf(users.carol)), [idOf(users.carol)], "one leave")
    assert.deepStrictEqual(p.events.joins.filter(k => k === idOf(users.carol)).length, 1, "one join")
  }
})

test("a node stopped with SIGTERM: its presences leave the others at once, not after the down period", async t => {
  const a = await inRoom(t, "n1", users.alice)
  const d = await inRoom(t, "n3", users.dave)
  await waitUntil(() => keysOf(a.presence).includes(idOf(users.dave)), "dave on n1", 4000)
  const stopped = new Promise(resolve => nodes.n3.child.once("exit", resolve))
  const at = Date.now()
  nodes.n3.child.kill("SIGTERM")
  await waitUntil(() => !keysOf(a.presence).includes(idOf(users.dave)), "dave gone from n1", 10000)
  const took = Date.now() - at
  assert.ok(took < 10000, `${took} ms`)
  await stopped
  assert.match(logsOf("n3"), /replica left \(graceful permdown sent\)/)
  d.socket.disconnect()
})

test("a node killed and restarted under its name: its old presences leave at its first heartbeat", async t => {
  const a = await inRoom(t, "n1", users.alice)
  await inRoom(t, "n2", users.bob)
  await waitUntil(() => keysOf(a.presence).includes(idOf(users.bob)), "bob on n1", 4000)
  nodes.n2.child.kill("SIGKILL")
  await sleep(500)
  const at = Date.now()
  await startReplica("n2")
  await waitUntil(() => !keysOf(a.presence).includes(idOf(users.bob)), "bob's old presence gone from n1", 10000)
  assert.ok(Date.now() - at < 10000, "well before the 30 s down period")
  // And a client on the new n2 is seen on n1 again.
  await inRoom(t, "n2", users.bob)
  await waitUntil(() => keysOf(a.presence).includes(idOf(users.bob)), "bob back on n1", 4000)
})

/** `{3, except, evil, <<"phx_presence:...">>, Msg, 'Elixir.Phoenix.PubSub'}` with Msg as raw bytes. */
function trackerEnvelope(msg){
  const atom = a => { const b = Buffer.from(a); return [119, b.length, ...b] }
  const bin = s => { const b = Buffer.from(s); return [109, 0, 0, (b.length >> 8) & 255, b.length & 255, ...b] }
  return Buffer.from([131, 104, 6, 97, 3, ...atom("except"), ...atom("evil"),
    ...bin("phx_presence:Elixir.Fawkes.Presence_shard0"), ...msg, ...atom("Elixir.Phoenix.PubSub")])
}

test("a malformed tracker message is counted, logged once, and changes nothing", async t => {
  const a = await inRoom(t, "n1", users.alice)
  await waitUntil(() => keysOf(a.presence).includes(idOf(users.alice)), "presence_state", 4000)
  await sleep(1000)
  const before = keysOf(a.presence)
  const ignored = (await metrics("n1")).fawkes_redis_ignored_total
  const atom = a => { const b = Buffer.from(a); return [119, b.length, ...b] }
  // {pub, heartbeat, not_a_ref, empty, not_clocks}
  const bad = trackerEnvelope([104, 5, ...atom("pub"), ...atom("heartbeat"), ...atom("not_a_ref"), ...atom("empty"), ...atom("x")])
  assert.ok(publish(PHX_CHANNEL, bad) >= 2)
  assert.ok(publish(PHX_CHANNEL, bad) >= 2)
  await eventually(async () => (await metrics("n1")).fawkes_redis_ignored_total >= ignored + 2, "counted")
  assert.equal(logsOf("n1").match(/a presence tracker message not read/g)?.length, 1)
  assert.deepStrictEqual(keysOf(a.presence), before)
  await linked(t, "n1", "n2", users.alice)
})

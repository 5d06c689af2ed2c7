// Three `fawkes serve` nodes on one PostgreSQL database and one real redis-server, driven the
// way a load balancer spreads phoenix.js clients: each client on its own node. Run by
// tests/cluster.rs with FAWKES_BIN (the fawkes binary) and DATABASE_URL (a fresh database).
// The test starts Redis and the nodes itself, so it can kill a node and restart Redis.

import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {Presence} from "phoenix"
import {joinOk, nextEvent, openSocket, pushOk, recorded, sleep, waitUntil} from "../helpers.js"
import {api, cli, createUser, eventually, joined, logsOf, metrics, nodes, socketOn, startNode, startRedis, stopNodes, stopRedis} from "./nodes.js"

const DOWN_AFTER_S = 3
const startNodeHere = name => startNode(name, ["--presence-down-after", String(DOWN_AFTER_S)])

/** A client whose Presence sees the join's presence_state and every diff after it. */
async function watchPresence(t, node, user, topic){
  const socket = socketOn(t, node, user)
  await openSocket(socket)
  const channel = socket.channel(topic)
  const presence = new Presence(channel)
  await joinOk(channel)
  return {socket, channel, presence}
}

const users = {}
let room

/** Until a typing push on one node reaches a client on another, the links are not all up. */
async function linked(t, from, to){
  const a = await joined(t, from, users.alice, `channel:${room.id}`)
  const b = await joined(t, to, users.bob, `channel:${room.id}`)
  let seen = false
  b.channel.on("typing", () => { seen = true })
  await eventually(async () => {
    a.channel.push("typing_start", {})
    await sleep(100)
    return seen
  }, `typing from ${from} reaches ${to}`, 15000)
  a.channel.leave(); b.channel.leave()
}

before(async () => {
  await startRedis()
  // One at a time: the first to open the database migrates it.
  for(const n of ["n1", "n2", "n3"]){ await startNodeHere(n) }
  for(const name of ["alice", "bob", "carol", "dave"]){ users[name] = createUser(name) }
  room = (await api("n1", users.alice, "POST", "/api/channels", {name: "cluster", private: false})).json
  for(const u of [users.bob, users.carol, users.dave]){
    assert.equal((await api("n2", u, "POST", `/api/channels/${room.id}/members`, {user_id: u.id})).status, 204)
  }
})

after(stopNodes)

test("the nodes link up over Redis", async t => {
  await linked(t, "n1", "n2")
  await linked(t, "n2", "n3")
  await linked(t, "n3", "n1")
})

test("a REST post on one node reaches feed subscribers on every node, with the same seq", async t => {
  const subs = await Promise.all(["n1", "n2", "n3"].map(n => joined(t, n, users.carol, "community:feed")))
  const seen = subs.map(s => nextEvent(s.channel, "new_post"))
  const post = await api("n2", users.dave, "POST", "/api/community/posts", {body: "across nodes"})
  assert.equal(post.status, 201)
  const got = await Promise.all(seen)
  for(const p of got){
    assert.deepStrictEqual(recorded(p), post.json)
    assert.equal(p.seq, got[0].seq)
  }
})

test("chat messages cross nodes and presence is one list over all of them", async t => {
  const topic = `channel:${room.id}`
  const a = socketOn(t, "n1", users.alice), b = socketOn(t, "n2", users.bob), c = socketOn(t, "n3", users.carol)
  await Promise.all([a, b, c].map(s => openSocket(s)))
  const ra = a.channel(topic), rb = b.channel(topic), rc = c.channel(topic)
  const presences = [ra, rb, rc].map(ch => new Presence(ch))
  for(const ch of [ra, rb, rc]){ await joinOk(ch) }
  const keys = p => p.list(k => k).sort()
  const everyone = [users.alice, users.bob, users.carol].map(u => String(u.id)).sort()
  for(const p of presences){
    await waitUntil(() => JSON.stringify(keys(p)) === JSON.stringify(everyone), () => `presence ${keys(p)}`, 5000)
  }
  const atB = nextEvent(rb, "new_message"), atC = nextEvent(rc, "new_message")
  const msg = await pushOk(ra, "new_message", {body: "hello from n1"})
  assert.deepStrictEqual(recorded(await atB), msg)
  assert.deepStrictEqual(recorded(await atC), msg)
  // Typing is not recorded: it crosses nodes as a plain broadcast.
  const typing = nextEvent(ra, "typing", {match: p => p.user_id === users.carol.id && p.typing === true})
  rc.push("typing_start", {})
  await typing
  // Carol leaves: both other nodes see her go.
  rc.leave()
  for(const p of presences.slice(0, 2)){
    await waitUntil(() => !keys(p).includes(String(users.carol.id)), () => `carol gone: ${keys(p)}`, 5000)
  }
})

test("collection writers on two nodes: every subscriber on every node sees each seq once, in order", async t => {
  const name = `orders_${Date.now()}`
  const first = await api("n1", users.alice, "POST", `/api/collections/${name}/records`, {n: 0})
  assert.equal(first.status, 201)
  const stores = []
  for(const node of ["n1", "n2", "n3"]){
    const s = await joined(t, node, users.alice, `collection:${name}`)
    const store = {start: s.reply.seq, seqs: []}
    s.channel.on("change", c => store.seqs.push(c.seq))
    stores.push(store)
  }
  const writes = []
  for(let i = 1; i <= 40; i++){
    writes.push(api(i % 2 ? "n1" : "n2", users.alice, "POST", `/api/collections/${name}/records`, {n: i}))
  }
  const done = await Promise.all(writes)
  assert.ok(done.every(w => w.status === 201), JSON.stringify(done.map(w => w.status)))
  const last = Math.max(...stores.map(s => s.start)) + 40
  for(const s of stores){
    await waitUntil(() => s.seqs.length >= last - s.start, () => `${s.seqs.length} changes`, 10000)
    const expected = Array.from({length: last - s.start}, (_, i) => s.start + 1 + i)
    assert.deepStrictEqual(s.seqs, expected)
  }
})

test("a revoked token closes its sockets on every node", async t => {
  const token = cli("tokens", "create", "--user", "dave").pop()
  const dave = {...users.dave, token}
  const closed = {}
  const sockets = ["n1", "n3"].map(n => {
    const s = socketOn(t, n, dave, {reconnectAfterMs: () => 60000})
    s.onClose(e => { closed[n] = e.code })
    return s
  })
  await Promise.all(sockets.map(s => openSocket(s)))
  cli("tokens", "revoke", token)
  await waitUntil(() => closed.n1 && closed.n3, () => `closed: ${JSON.stringify(closed)}`, 5000)
  assert.deepStrictEqual(closed, {n1: 1001, n3: 1001})
})

test("a node killed with SIGKILL: its presences leave the others within the timeout", async t => {
  const topic = `channel:${room.id}`
  const {presence} = await watchPresence(t, "n1", users.alice, topic)
  const victim = socketOn(t, "n3", users.dave)
  await openSocket(victim)
  await joinOk(victim.channel(topic))
  const key = String(users.dave.id)
  await waitUntil(() => presence.list(k => k).includes(key), "dave present on n1", 5000)
  const killedAt = Date.now()
  nodes.n3.child.kill("SIGKILL")
  await waitUntil(() => !presence.list(k => k).includes(key), "dave gone from n1", (DOWN_AFTER_S + 3) * 1000)
  const took = Date.now() - killedAt
  assert.ok(took >= (DOWN_AFTER_S - 1) * 1000, `left after ${took} ms: only the timeout takes a silent node down`)
  // The others still serve each other.
  await linked(t, "n1", "n2")
})

test("Redis restarted mid-run: no client is closed, each node serves its own, and the link comes back", async t => {
  const topic = `channel:${room.id}`
  const closes = []
  const a = socketOn(t, "n1", users.alice), a2 = socketOn(t, "n1", users.carol), b = socketOn(t, "n2", users.bob)
  for(const s of [a, a2, b]){ s.onClose(e => closes.push(e.code)); await openSocket(s) }
  const ra = a.channel(topic), ra2 = a2.channel(topic), rb = b.channel(topic)
  // Presence listens before the join, to see the presence_state that follows it.
  const pb = new Presence(rb)
  for(const ch of [ra, ra2, rb]){ await joinOk(ch) }
  await waitUntil(() => pb.list(k => k).includes(String(users.alice.id)), "alice present on n2", 5000)

  const before = await metrics("n1")
  assert.equal(before.fawkes_redis_up, 1)
  assert.equal(before.fawkes_redis_outages_total, 0)
  assert.ok(before.fawkes_redis_received_total > 0 && before.fawkes_redis_published_total > 0, JSON.stringify(before))

  await stopRedis()
  // Local broadcasts go on while Redis is away.
  const local = nextEvent(ra2, "new_message")
  const msg = await pushOk(ra, "new_message", {body: "while Redis is down"})
  assert.deepStrictEqual(recorded(await local), msg)
  // n1 is silent for n2 longer than the timeout: its presences leave there...
  await waitUntil(() => !pb.list(k => k).includes(String(users.alice.id)), "alice gone from n2 during the outage", (DOWN_AFTER_S + 3) * 1000)

  await startRedis()
  // ...and come back after the reconnect; broadcasts cross again.
  await waitUntil(() => pb.list(k => k).includes(String(users.alice.id)), "alice back on n2", 15000)
  const atB = nextEvent(rb, "new_message", {match: p => p.body === "after the restart"})
  await pushOk(ra, "new_message", {body: "after the restart"})
  await atB
  assert.deepStrictEqual(closes, [], "no socket closed")
  const afterwards = await metrics("n1")
  assert.equal(afterwards.fawkes_redis_up, 1)
  assert.equal(afterwards.fawkes_redis_outages_total, 1)
  // What n1 broadcast while Redis was away could not be published.
  assert.ok(afterwards.fawkes_redis_unpublished_total >= 1, JSON.stringify(afterwards))
  assert.match(logsOf("n1"), /Redis link lost/)
  assert.match(logsOf("n1"), /Redis link back after/)
})

// Three `fawkes serve` nodes on one PostgreSQL database and one real redis-server, driven the
// way a load balancer spreads phoenix.js clients: each client on its own node. Run by
// tests/cluster.rs with FAWKES_BIN (the fawkes binary) and DATABASE_URL (a fresh database).
// The test starts Redis and the nodes itself, so it can kill a node and restart Redis.

import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {spawn, execFileSync} from "node:child_process"
import {createServer} from "node:net"
import {openSync, readFileSync, mkdtempSync} from "node:fs"
import {tmpdir} from "node:os"
import {join} from "node:path"
import {Socket, Presence} from "phoenix"
import {WebSocket} from "ws"
import {disconnect, joinOk, nextEvent, openSocket, pushOk, recorded, sleep, waitUntil} from "../helpers.js"

const BIN = process.env.FAWKES_BIN
const DATABASE_URL = process.env.DATABASE_URL
if(!BIN || !DATABASE_URL){ throw new Error("FAWKES_BIN and DATABASE_URL are required") }
const DOWN_AFTER_S = 3
const METRICS_TOKEN = "cluster-metrics"
const LOGS = mkdtempSync(join(tmpdir(), "fawkes-cluster-"))

function freePort(){
  return new Promise(resolve => {
    const s = createServer().listen(0, "127.0.0.1", () => { const {port} = s.address(); s.close(() => resolve(port)) })
  })
}

function waitForLine(child, pattern, what){
  return new Promise((resolve, reject) => {
    let seen = ""
    const timer = setTimeout(() => reject(new Error(`${what} did not start: ${seen}`)), 10000)
    child.stdout.on("data", d => {
      seen += d
      if(pattern.test(seen)){ clearTimeout(timer); resolve() }
    })
    child.on("exit", code => { clearTimeout(timer); reject(new Error(`${what} exited ${code}: ${seen}`)) })
  })
}

let redisPort
let redis
async function startRedis(){
  redis = spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {stdio: ["ignore", "pipe", "inherit"]})
  await waitForLine(redis, /Ready to accept connections/, "redis-server")
}
function stopRedis(){
  return new Promise(resolve => { redis.once("exit", resolve); redis.kill("SIGKILL") })
}

const nodes = {}
async function startNode(name){
  const port = await freePort()
  const log = openSync(join(LOGS, `${name}.log`), "a")
  const child = spawn(BIN, ["serve", "--port", String(port), "--redis-url", `redis://127.0.0.1:${redisPort}`,
    "--node-name", name, "--presence-down-after", String(DOWN_AFTER_S), "--metrics-token", METRICS_TOKEN], {
    env: {...process.env, DATABASE_URL, RUST_LOG: "info"}, stdio: ["ignore", "pipe", log]
  })
  await waitForLine(child, /listening/, `node ${name}`)
  nodes[name] = {child, base: `http://127.0.0.1:${port}`}
  return nodes[name]
}

function cli(...args){
  return execFileSync(BIN, args, {env: {...process.env, DATABASE_URL}}).toString().trim().split("\n")
}

function createUser(name){
  const out = cli("users", "create", "--name", name, "--community-member")
  const id = Number(/\(id (\d+)\)/.exec(out[0])[1])
  return {id, name, token: out[out.length - 1]}
}

async function api(node, user, method, path, body){
  const resp = await fetch(nodes[node].base + path, {
    method,
    headers: {"authorization": `Bearer ${user.token}`, "content-type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await resp.text()
  return {status: resp.status, json: text ? JSON.parse(text) : null}
}

function socketOn(t, node, user, opts = {}){
  const socket = new Socket(nodes[node].base.replace(/^http/, "ws") + "/socket", {
    transport: WebSocket, params: {token: user.token}, timeout: 3000,
    reconnectAfterMs: () => 100, rejoinAfterMs: () => 100, ...opts
  })
  t.after(() => disconnect(socket))
  return socket
}

async function joined(t, node, user, topic, params){
  const socket = socketOn(t, node, user)
  await openSocket(socket)
  const channel = socket.channel(topic, params)
  const reply = await joinOk(channel)
  return {socket, channel, reply}
}

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
  await waitUntil(async () => {
    a.channel.push("typing_start", {})
    await sleep(100)
    return seen
  }, `typing from ${from} reaches ${to}`, 15000)
  a.channel.leave(); b.channel.leave()
}

/** The node's Prometheus samples, by name (with labels). */
async function metrics(node){
  const resp = await fetch(nodes[node].base + "/metrics", {headers: {authorization: `Bearer ${METRICS_TOKEN}`}})
  assert.equal(resp.status, 200)
  const samples = {}
  for(const line of (await resp.text()).split("\n")){
    if(line && !line.startsWith("#")){ const i = line.lastIndexOf(" "); samples[line.slice(0, i)] = Number(line.slice(i + 1)) }
  }
  return samples
}

function logsOf(name){ try { return readFileSync(join(LOGS, `${name}.log`), "utf8") } catch { return "" } }

before(async () => {
  redisPort = await freePort()
  await startRedis()
  // One at a time: the first to open the database migrates it.
  for(const n of ["n1", "n2", "n3"]){ await startNode(n) }
  for(const name of ["alice", "bob", "carol", "dave"]){ users[name] = createUser(name) }
  room = (await api("n1", users.alice, "POST", "/api/channels", {name: "cluster", private: false})).json
  for(const u of [users.bob, users.carol, users.dave]){
    assert.equal((await api("n2", u, "POST", `/api/channels/${room.id}/members`, {user_id: u.id})).status, 204)
  }
})

after(async () => {
  for(const n of Object.values(nodes)){ n.child.kill("SIGKILL") }
  if(redis){ redis.kill("SIGKILL") }
})

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

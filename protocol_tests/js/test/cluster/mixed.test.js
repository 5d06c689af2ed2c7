// Elixir and Fawkes nodes of one app sharing one presence list: a real Phoenix 1.7.24 node
// (phoenix_pubsub_redis 3.1.0, the fixture of ../shared/phoenix-reference-redis/, built outside the
// repository) and two Fawkes nodes running the same conformance fixture, on one real redis-server,
// phoenix.js clients on all three joined to `channel:lobby` (presence keyed by `user_id`). Fawkes
// nodes are replicas of PhoenixFixture.Presence (`--presence-name`), the Phoenix node's own
// Phoenix.Tracker is the other. Down periods are Phoenix's default, 30 s.
// Run by tests/mixed_cluster.rs with FIXTURE_BIN (examples/conformance_server), ANCHOR_DIR (the
// folder holding the built phoenix_fixture/) and ANCHOR_SCRIPTS (its start/stop scripts).

import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {spawn, execFileSync} from "node:child_process"
import {readFileSync} from "node:fs"
import {Socket} from "phoenix"
import {WebSocket} from "ws"
import {disconnect, joinOk, openSocket, sleep, waitUntil, watchKeys} from "../helpers.js"
import {createServer} from "node:net"

const {FIXTURE_BIN, ANCHOR_DIR, ANCHOR_SCRIPTS} = process.env
if(!FIXTURE_BIN || !ANCHOR_DIR || !ANCHOR_SCRIPTS){ throw new Error("FIXTURE_BIN, ANCHOR_DIR and ANCHOR_SCRIPTS are required") }

function freePort(){
  return new Promise(resolve => {
    const s = createServer().listen(0, "127.0.0.1", () => { const {port} = s.address(); s.close(() => resolve(port)) })
  })
}

const redis = {port: 0, child: null}
const nodes = {}
const fawkesLogs = {}

function started(child, pattern, what){
  return new Promise((resolve, reject) => {
    let seen = ""
    const timer = setTimeout(() => reject(new Error(`${what} did not start: ${seen}`)), 15000)
    const look = d => { seen += d; if(pattern.test(seen)){ clearTimeout(timer); resolve() } }
    child.stdout.on("data", look)
    child.on("exit", code => { clearTimeout(timer); reject(new Error(`${what} exited ${code}: ${seen}`)) })
  })
}

async function startPhoenix(name){
  const port = nodes[name]?.port || await freePort()
  const env = {...process.env, ANCHOR_DIR, PORT: String(port), NODE_NAME: name, REDIS_URL: `redis://127.0.0.1:${redis.port}`}
  const pid = Number(execFileSync("bash", [`${ANCHOR_SCRIPTS}/start_anchor.sh`], {env}).toString().trim())
  nodes[name] = {kind: "phoenix", port, pid, url: `ws://127.0.0.1:${port}/socket`}
}

const phoenixLog = name => readFileSync(`${ANCHOR_DIR}/anchor-${nodes[name].port}.log`, "utf8")

async function startFawkes(name){
  const port = await freePort()
  const child = spawn(FIXTURE_BIN, ["--port", String(port), "--redis-url", `redis://127.0.0.1:${redis.port}`, "--node-name", name,
    "--pubsub-name", "PhoenixFixture.PubSub", "--presence-name", "PhoenixFixture.Presence"],
  {env: {...process.env, RUST_LOG: "info"}, stdio: ["ignore", "pipe", "pipe"]})
  fawkesLogs[name] = ""
  child.stderr.on("data", d => { fawkesLogs[name] += d })
  await started(child, /listening/, `fawkes ${name}`)
  nodes[name] = {kind: "fawkes", port, child, url: `ws://127.0.0.1:${port}/socket`}
}

function kill(name){
  const n = nodes[name]
  if(n.kind === "phoenix"){ try { process.kill(n.pid, "SIGKILL") } catch {} } else { n.child.kill("SIGKILL") }
}

/** A phoenix.js client of `node` in channel:lobby as `user`, with its Presence and what it saw. */
async function inLobby(t, node, user){
  const socket = new Socket(nodes[node].url, {transport: WebSocket, timeout: 3000, reconnectAfterMs: () => 500})
  t.after(() => disconnect(socket))
  await openSocket(socket)
  const channel = socket.channel("channel:lobby", {user_id: user})
  const {presence, seen} = watchKeys(channel)
  await joinOk(channel)
  return {socket, channel, presence, seen}
}

const keys = c => c.presence.list(k => k).sort()
/** Keys with their metas as every node must show them: phx_ref and online_at of each. */
const metas = c => c.presence.list((k, {metas}) => `${k}:${metas.map(m => `${m.phx_ref}@${m.online_at}`).sort().join(",")}`).sort()

before(async () => {
  redis.port = await freePort()
  redis.child = spawn("redis-server", ["--port", String(redis.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    {stdio: ["ignore", "pipe", "inherit"]})
  await started(redis.child, /Ready to accept connections/, "redis-server")
  await startPhoenix("phx1")
  await startFawkes("f1")
  await startFawkes("f2")
})

after(() => {
  for(const [name, n] of Object.entries(nodes)){ if(n.kind === "phoenix"){ kill(name) } else { n.child.kill("SIGKILL") } }
  if(redis.child){ redis.child.kill("SIGKILL") }
})

test("one presence list over a Phoenix node and two Fawkes nodes: same keys, same metas", async t => {
  const a = await inLobby(t, "phx1", "u1")
  const b = await inLobby(t, "f1", "u2")
  const c = await inLobby(t, "f2", "u3")
  for(const x of [a, b, c]){
    await waitUntil(() => JSON.stringify(keys(x)) === JSON.stringify(["u1", "u2", "u3"]), () => `list ${keys(x)}`, 20000)
  }
  assert.deepStrictEqual(metas(b), metas(a))
  assert.deepStrictEqual(metas(c), metas(a))
  // Once the replicas know each other, a join and a leave on either side reach the other within
  // two broadcast periods (2 × 1.5 s).
  const within = async (what, check) => {
    const at = Date.now()
    await waitUntil(check, what, 3000)
    return Date.now() - at
  }
  const e = await inLobby(t, "f2", "u5")
  const fawkesJoin = await within("u5 (f2) on phx1", () => keys(a).includes("u5"))
  const g = await inLobby(t, "phx1", "u6")
  const phoenixJoin = await within("u6 (phx1) on f2", () => keys(c).includes("u6"))
  e.channel.leave()
  const fawkesLeave = await within("u5 gone from phx1", () => !keys(a).includes("u5"))
  g.channel.leave()
  const phoenixLeave = await within("u6 gone from f2", () => !keys(c).includes("u6"))
  t.diagnostic(`join f2->phx1 ${fawkesJoin} ms, phx1->f2 ${phoenixJoin} ms; leave ${fawkesLeave} ms, ${phoenixLeave} ms`)
  // A leave on the Phoenix node and one on a Fawkes node reach every other node once.
  a.channel.leave()
  c.channel.leave()
  for(const x of [b]){
    await waitUntil(() => JSON.stringify(keys(x)) === JSON.stringify(["u2"]), () => `list ${keys(x)}`, 4000)
  }
  const d = await inLobby(t, "phx1", "u4")
  await waitUntil(() => JSON.stringify(keys(d)) === JSON.stringify(["u2", "u4"]), () => `phx1 list ${keys(d)}`, 4000)
  await sleep(3000)
  assert.deepStrictEqual(b.seen.leaves.sort(), ["u1", "u3", "u5", "u6"])
  assert.deepStrictEqual(b.seen.joins.sort(), ["u1", "u2", "u3", "u4", "u5", "u6"])
  for(const name of ["f1", "f2"]){ assert.match(fawkesLogs[name], /presence: replica phx1 is up/) }
  assert.doesNotMatch(phoenixLog("phx1"), /\[error\]/)
})

test("a Phoenix node killed: its presences leave the Fawkes nodes after the down period; back under its name, its new ones join", async t => {
  const a = await inLobby(t, "phx1", "p1")
  const b = await inLobby(t, "f1", "q1")
  await waitUntil(() => keys(b).includes("p1") && keys(a).includes("q1"), () => `f1 ${keys(b)}, phx1 ${keys(a)}`, 20000)
  const at = Date.now()
  kill("phx1")
  await waitUntil(() => !keys(b).includes("p1"), "p1 gone from f1", 40000)
  const took = Date.now() - at
  // Down after 30 s without a heartbeat; Phoenix's idle ones come every 16.5 s.
  assert.ok(took >= 12000, `left after ${took} ms: only the down period takes a silent replica down`)
  // Its client would come back with it: let it go.
  await disconnect(a.socket)
  await startPhoenix("phx1")
  const a2 = await inLobby(t, "phx1", "p2")
  await waitUntil(() => keys(b).includes("p2"), () => `f1 ${keys(b)}`, 20000)
  // The new incarnation learns of the Fawkes replica's presences with a transfer.
  await waitUntil(() => keys(a2).includes("q1"), () => `phx1 ${keys(a2)}`, 25000)
  assert.ok(!keys(b).includes("p1"))
})

test("a Fawkes node killed with SIGKILL: its presences leave the Phoenix node after the down period", async t => {
  const a = await inLobby(t, "phx1", "r1")
  await inLobby(t, "f2", "s1")
  await waitUntil(() => keys(a).includes("s1"), () => `phx1 ${keys(a)}`, 20000)
  const at = Date.now()
  kill("f2")
  await waitUntil(() => !keys(a).includes("s1"), "s1 gone from phx1", 45000)
  const took = Date.now() - at
  assert.ok(took >= 12000, `left after ${took} ms`)
  assert.doesNotMatch(phoenixLog("phx1"), /\[error\]/)
})

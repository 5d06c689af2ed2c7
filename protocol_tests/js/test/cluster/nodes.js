// What the cluster tests share: a real redis-server and real `fawkes serve` nodes started on
// free ports (each test file its own), users made with the CLI, REST calls and phoenix.js
// sockets on a chosen node, the nodes' metrics and logs, and raw PUBLISHes with redis-cli.
// Run by tests/cluster.rs with FAWKES_BIN (the fawkes binary) and DATABASE_URL (a fresh database).

import assert from "node:assert/strict"
import {spawn, execFileSync} from "node:child_process"
import {createServer} from "node:net"
import {openSync, readFileSync, mkdtempSync} from "node:fs"
import {tmpdir} from "node:os"
import {join} from "node:path"
import {Socket} from "phoenix"
import {WebSocket} from "ws"
import {disconnect, joinOk, openSocket, sleep} from "../helpers.js"

export const BIN = process.env.FAWKES_BIN
export const DATABASE_URL = process.env.DATABASE_URL
if(!BIN || !DATABASE_URL){ throw new Error("FAWKES_BIN and DATABASE_URL are required") }
export const METRICS_TOKEN = "cluster-metrics"
/** The Redis channel of the default PubSub name, as phoenix_pubsub_redis names it. */
export const PHX_CHANNEL = "phx:Elixir.Fawkes.PubSub.Adapter"
const LOGS = mkdtempSync(join(tmpdir(), "fawkes-cluster-"))

export function freePort(){
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

/** The one redis-server of this file: its port stays the same across restarts. */
export const redis = {port: 0, child: null}

/** Nodes that may start: each signs in to Redis as an ACL user of its own name, so that a test
 * can cut one node off (`ACL SETUSER n1 off`, `CLIENT KILL USER n1`) and let the others be. */
const NODE_NAMES = ["n1", "n2", "n3"]
const redisPassword = name => `pw-${name}`

export async function startRedis(){
  if(!redis.port){ redis.port = await freePort() }
  const users = NODE_NAMES.flatMap(n => ["--user", n, "on", `>${redisPassword(n)}`, "~*", "&*", "+@all"])
  redis.child = spawn("redis-server", ["--port", String(redis.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", ...users],
    {stdio: ["ignore", "pipe", "inherit"]})
  await waitForLine(redis.child, /Ready to accept connections/, "redis-server")
}

export function stopRedis(){
  return new Promise(resolve => { redis.child.once("exit", resolve); redis.child.kill("SIGKILL") })
}

/** `redis-cli ARGS...` against this file's Redis; `input` (bytes) is its last argument (`-x`). */
export function redisCli(args, input){
  const x = input === undefined ? [] : ["-x"]
  return execFileSync("redis-cli", ["-p", String(redis.port), ...x, ...args], {input}).toString().trim()
}

/** PUBLISHes raw bytes, as any Redis client could; returns how many subscribers got them. */
export function publish(channel, bytes){
  return Number(redisCli(["PUBLISH", channel], Buffer.from(bytes)))
}

export const nodes = {}

/** With PRESENCE_NAME set, every node replicates presence as a Phoenix.Tracker replica of that
 * Presence (`--presence-name`, with PRESENCE_POOL_SIZE shards) rather than on Fawkes's own channel. */
const PRESENCE_ARGS = process.env.PRESENCE_NAME
  ? ["--presence-name", process.env.PRESENCE_NAME, "--presence-pool-size", process.env.PRESENCE_POOL_SIZE || "1"]
  : []

export async function startNode(name, args = []){
  const port = await freePort()
  const log = openSync(join(LOGS, `${name}.log`), "a")
  assert.ok(NODE_NAMES.includes(name), `${name} has no Redis user`)
  const child = spawn(BIN, ["serve", "--port", String(port), "--redis-url", `redis://${name}:${redisPassword(name)}@127.0.0.1:${redis.port}`,
    "--node-name", name, "--metrics-token", METRICS_TOKEN, ...PRESENCE_ARGS, ...args], {
    env: {...process.env, DATABASE_URL, RUST_LOG: "info"}, stdio: ["ignore", "pipe", log]
  })
  await waitForLine(child, /listening/, `node ${name}`)
  nodes[name] = {child, base: `http://127.0.0.1:${port}`}
  return nodes[name]
}

export function stopNodes(){
  for(const n of Object.values(nodes)){ n.child.kill("SIGKILL") }
  if(redis.child){ redis.child.kill("SIGKILL") }
}

export function cli(...args){
  return execFileSync(BIN, args, {env: {...process.env, DATABASE_URL}}).toString().trim().split("\n")
}

export function createUser(name){
  const out = cli("users", "create", "--name", name, "--community-member")
  const id = Number(/\(id (\d+)\)/.exec(out[0])[1])
  return {id, name, token: out[out.length - 1]}
}

export async function api(node, user, method, path, body){
  const resp = await fetch(nodes[node].base + path, {
    method,
    headers: {"authorization": `Bearer ${user.token}`, "content-type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await resp.text()
  return {status: resp.status, json: text ? JSON.parse(text) : null}
}

export function socketOn(t, node, user, opts = {}){
  const socket = new Socket(nodes[node].base.replace(/^http/, "ws") + "/socket", {
    transport: WebSocket, params: {token: user.token}, timeout: 3000,
    reconnectAfterMs: () => 100, rejoinAfterMs: () => 100, ...opts
  })
  t.after(() => disconnect(socket))
  return socket
}

export async function joined(t, node, user, topic, params){
  const socket = socketOn(t, node, user)
  await openSocket(socket)
  const channel = socket.channel(topic, params)
  const reply = await joinOk(channel)
  return {socket, channel, reply}
}

/** The node's Prometheus samples, by name (with labels). */
export async function metrics(node){
  const resp = await fetch(nodes[node].base + "/metrics", {headers: {authorization: `Bearer ${METRICS_TOKEN}`}})
  assert.equal(resp.status, 200)
  const samples = {}
  for(const line of (await resp.text()).split("\n")){
    if(line && !line.startsWith("#")){ const i = line.lastIndexOf(" "); samples[line.slice(0, i)] = Number(line.slice(i + 1)) }
  }
  return samples
}

export function logsOf(name){ try { return readFileSync(join(LOGS, `${name}.log`), "utf8") } catch { return "" } }

/** A field of the node process's /proc status, in kB (VmRSS, VmHWM...). */
export function procKb(node, field){
  const status = readFileSync(`/proc/${nodes[node].child.pid}/status`, "utf8")
  return Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)[1])
}

/** Polls an async `predicate` until it holds; throws `message()` on timeout. */
export async function eventually(predicate, message, timeout = 5000){
  const deadline = Date.now() + timeout
  while(!(await predicate())){
    if(Date.now() > deadline){
      throw new Error(`timed out after ${timeout} ms: ${typeof message === "function" ? await message() : message}`)
    }
    await sleep(50)
  }
}

/** Until a post on one node reaches a feed client on another, the links are not both up. */
export async function linked(t, from, to, user){
  const b = await joined(t, to, user, "community:feed")
  let seen = false
  b.channel.on("new_post", () => { seen = true })
  await eventually(async () => {
    assert.equal((await api(from, user, "POST", "/api/community/posts", {body: `link ${from} to ${to}`})).status, 201)
    await sleep(150)
    return seen
  }, `a post on ${from} reaches ${to}`, 15000)
  b.channel.leave()
}

/**
 * A phoenix_pubsub_redis 3.x message as any Redis client could PUBLISH it:
 * `term_to_binary({3, :except, node, topic, %Phoenix.Socket.Broadcast{}, Phoenix.Channel.Server})`.
 * Payload values: strings, numbers (BigInt for beyond 32 bits), null, booleans, arrays, objects.
 */
export function broadcastTerm({node, topic, event, payload}){
  const out = [131]
  const u32 = n => [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]
  const atom = a => { const b = Buffer.from(a); out.push(119, b.length, ...b) }
  const binary = s => { const b = Buffer.from(s); out.push(109, ...u32(b.length), ...b) }
  const int = i => {
    if(typeof i === "number" && i >= 0 && i <= 255){ out.push(97, i); return }
    if(typeof i === "number" && i >= -(2 ** 31) && i < 2 ** 31){ out.push(98, ...u32(i >>> 0)); return }
    let m = BigInt(i) < 0n ? -BigInt(i) : BigInt(i)
    const digits = []
    while(m > 0n){ digits.push(Number(m & 255n)); m >>= 8n }
    out.push(110, digits.length, BigInt(i) < 0n ? 1 : 0, ...digits)
  }
  const value = v => {
    if(v === null){ atom("nil") }
    else if(typeof v === "boolean"){ atom(String(v)) }
    else if(typeof v === "bigint" || Number.isInteger(v)){ int(v) }
    else if(typeof v === "string"){ binary(v) }
    else if(Array.isArray(v)){
      if(v.length === 0){ out.push(106); return }
      out.push(108, ...u32(v.length)); v.forEach(value); out.push(106)
    } else {
      const keys = Object.keys(v).sort()
      out.push(116, ...u32(keys.length))
      for(const k of keys){ binary(k); value(v[k]) }
    }
  }
  out.push(104, 6); int(3); atom("except"); atom(node); binary(topic)
  out.push(116, ...u32(4))
  atom("__struct__"); atom("Elixir.Phoenix.Socket.Broadcast")
  atom("event"); binary(event)
  atom("payload"); value(payload)
  atom("topic"); binary(topic)
  atom("Elixir.Phoenix.Channel.Server")
  return Buffer.from(out)
}

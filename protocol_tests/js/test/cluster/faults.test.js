// What Redis (or anyone who can PUBLISH on it) does to a cluster: hostile messages, outages in
// the middle of a write. Three `fawkes serve` nodes on one PostgreSQL database and one real
// redis-server, phoenix.js clients on each; raw messages go in with redis-cli, as any Redis client
// could send them.

import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {deflateSync} from "node:zlib"
import {QUIET_MS, nextEvent, recordEvents, recorded, sleep} from "../helpers.js"
import {
  PHX_CHANNEL, api, broadcastTerm, createUser, eventually, joined, linked, logsOf, metrics, procKb,
  publish, startNode, startRedis, stopNodes
} from "./nodes.js"

const users = {}

before(async () => {
  await startRedis()
  // One at a time: the first to open the database migrates it.
  for(const n of ["n1", "n2", "n3"]){ await startNode(n) }
  for(const name of ["alice", "bob", "carol", "dave"]){ users[name] = createUser(name) }
})

after(stopNodes)

test("the nodes link up over Redis", async t => {
  await linked(t, "n1", "n2", users.alice)
  await linked(t, "n2", "n3", users.alice)
  await linked(t, "n3", "n1", users.alice)
})

/** `n` empty lists as one compressed term: 8 million fit in under 9 KB. */
function emptyListsBomb(n){
  const raw = Buffer.alloc(5 + n + 1, 106)
  raw[0] = 108
  raw.writeUInt32BE(n, 1)
  const size = Buffer.alloc(4)
  size.writeUInt32BE(raw.length)
  return Buffer.concat([Buffer.from([131, 80]), size, deflateSync(raw, {level: 9})])
}

test("a compressed-term bomb on Redis is refused by its memory: counted, logged once, and broadcasts go on", async t => {
  const bomb = emptyListsBomb(8_000_000)
  assert.ok(bomb.length < 9000, `${bomb.length} bytes`)
  const before = await metrics("n1")
  const peakBefore = procKb("n1", "VmHWM")
  // Every node reads it: three subscribers.
  assert.equal(publish(PHX_CHANNEL, bomb), 3)
  assert.equal(publish(PHX_CHANNEL, bomb), 3)
  await eventually(async () => (await metrics("n1")).fawkes_redis_refused_total === 2,
    async () => `refused: ${JSON.stringify(await metrics("n1"))}`)
  assert.equal(before.fawkes_redis_refused_total, 0)
  // Inflated it is 8 MB, which the message bound allows; its 8 million terms (256 MB) are not
  // made. Generous: the peak RSS grows by less than 64 MB.
  const grown = procKb("n1", "VmHWM") - peakBefore
  assert.ok(grown < 64 * 1024, `peak RSS grew by ${grown} kB`)
  assert.equal(logsOf("n1").match(/refused a message from Redis: decoded term over the memory limit/g)?.length, 1)
  // The node goes on: a post on another node reaches its client.
  const sub = await joined(t, "n1", users.carol, "community:feed")
  const seen = nextEvent(sub.channel, "new_post")
  const post = await api("n2", users.dave, "POST", "/api/community/posts", {body: "after the bomb"})
  assert.equal(post.status, 201)
  assert.deepStrictEqual(recorded(await seen), post.json)
})

test("a forged seq on Redis silences no topic: the next post reaches feed clients on every node", async t => {
  const subs = await Promise.all(["n1", "n2", "n3"].map(n => joined(t, n, users.carol, "community:feed")))
  const start = subs[0].reply.seq
  assert.ok(subs.every(s => s.reply.seq === start))
  const got = subs.map(s => recordEvents(s.channel, "new_post"))
  const before = await Promise.all(["n1", "n2", "n3"].map(metrics))
  // seq 2^63-1, from a node nobody knows and in the name of a real node (n2, which takes it for
  // its own and drops it); the payload as a Fawkes node writes it, but for the signature.
  const forged = node => broadcastTerm({node, topic: "community:feed", event: "new_post",
    payload: {id: 0, body: "forged", user: {id: users.dave.id, name: "dave"}, seq: 2n ** 63n - 1n}})
  assert.equal(publish(PHX_CHANNEL, forged("phx@elsewhere")), 3)
  assert.equal(publish(PHX_CHANNEL, forged("n2")), 3)
  // Longer than an early broadcast is held (250 ms): a believed seq would be skipped to by now.
  await sleep(600)
  const post = await api("n2", users.dave, "POST", "/api/community/posts", {body: "after the forgery"})
  assert.equal(post.status, 201)
  for(const g of got){
    await eventually(() => g.payloads.length >= 1, () => `new_post on every node: ${JSON.stringify(got.map(g => g.payloads))}`)
  }
  await sleep(QUIET_MS)
  for(const g of got){
    assert.deepStrictEqual(g.payloads.map(recorded), [post.json])
    assert.equal(g.payloads[0].seq, start + 1)
  }
  // Not delivered, counted: both forgeries on n1 and n3, the one not in its own name on n2.
  const after = await Promise.all(["n1", "n2", "n3"].map(metrics))
  assert.deepStrictEqual(after.map((m, i) => m.fawkes_recorded_unsigned_total - before[i].fawkes_recorded_unsigned_total), [2, 1, 2])
  assert.equal(logsOf("n1").match(/whose seq no node of this cluster signed/g)?.length, 1)
})

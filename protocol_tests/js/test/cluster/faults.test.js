// What Redis (or anyone who can PUBLISH on it) does to a cluster: hostile messages, outages in
// the middle of a write. Three `fawkes serve` nodes on one PostgreSQL database and one real
// redis-server, phoenix.js clients on each; raw messages go in with redis-cli, as any Redis client
// could send them.

import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {deflateSync} from "node:zlib"
import {nextEvent, recorded} from "../helpers.js"
import {
  PHX_CHANNEL, api, createUser, eventually, joined, linked, logsOf, metrics, procKb, publish,
  startNode, startRedis, stopNodes
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

// What Redis (or anyone who can PUBLISH on it) does to a cluster: hostile messages, outages in
// the middle of a write. Three `fawkes serve` nodes on one PostgreSQL database and one real
// redis-server, phoenix.js clients on each; raw messages go in with redis-cli, as any Redis client
// could send them.

import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {deflateSync} from "node:zlib"
import {QUIET_MS, joinOk, nextEvent, openSocket, pushOk, recordEvents, recordMessages, recorded, sleep} from "../helpers.js"
import {
  PHX_CHANNEL, api, broadcastTerm, createUser, eventually, joined, linked, logsOf, metrics, procKb,
  publish, redisCli, socketOn, startNode, startRedis, stopNodes, stopRedis
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

/** Feed clients on n1 and n2, each recording its `new_post`s; the feed's seq at their join. */
async function feedOn(t){
  const a = await joined(t, "n1", users.carol, "community:feed")
  const b = await joined(t, "n2", users.carol, "community:feed")
  assert.equal(a.reply.seq, b.reply.seq)
  return {start: a.reply.seq, atA: recordEvents(a.channel, "new_post"), atB: recordEvents(b.channel, "new_post")}
}

const up = async node => (await metrics(node)).fawkes_redis_up === 1

test("a write made while Redis is down reaches the other nodes' clients once it is back, with no later write", async t => {
  const {start, atA, atB} = await feedOn(t)
  await stopRedis()
  await eventually(async () => !(await up("n1")) && !(await up("n2")), "both links down")
  const post = await api("n1", users.dave, "POST", "/api/community/posts", {body: "while Redis is down"})
  assert.equal(post.status, 201)
  await eventually(() => atA.payloads.length === 1, "n1's own client has it")
  await sleep(QUIET_MS)
  assert.equal(atB.payloads.length, 0, "n2 cannot have it yet")
  await startRedis()
  // Nothing else is written: the post comes from n2's catch-up when its link is back.
  await eventually(() => atB.payloads.length >= 1, "the post reaches n2's client", 15000)
  await sleep(QUIET_MS)
  assert.deepStrictEqual(atB.payloads.map(recorded), [post.json])
  assert.equal(atB.payloads[0].seq, start + 1)
  assert.deepStrictEqual(atA.payloads, atB.payloads)
  await eventually(async () => await up("n1") && await up("n2") && await up("n3"), "every link back", 15000)
})

test("a write made while only its own node's link is down reaches the others when that link is back", async t => {
  const {start, atA, atB} = await feedOn(t)
  // n1 alone is cut off: the others stay linked and hear nothing of what n1 writes.
  redisCli(["ACL", "SETUSER", "n1", "off"])
  redisCli(["CLIENT", "KILL", "USER", "n1"])
  await eventually(async () => !(await up("n1")), "n1's link down")
  assert.ok(await up("n2"))
  const post = await api("n1", users.dave, "POST", "/api/community/posts", {body: "while n1 alone is cut off"})
  assert.equal(post.status, 201)
  await eventually(() => atA.payloads.length === 1, "n1's own client has it")
  await sleep(QUIET_MS)
  assert.equal(atB.payloads.length, 0, "n2 cannot have it yet")
  redisCli(["ACL", "SETUSER", "n1", "on"])
  // n2 never lost its link: n1 tells it how far the feed went, and n2 reads the rest.
  await eventually(() => atB.payloads.length >= 1, "the post reaches n2's client", 15000)
  await sleep(QUIET_MS)
  assert.deepStrictEqual(atB.payloads.map(recorded), [post.json])
  assert.equal(atB.payloads[0].seq, start + 1)
  assert.deepStrictEqual(atA.payloads, atB.payloads)
})

test("a node whose own link was down catches up, once it is back, what the others wrote meanwhile", async t => {
  const {start, atA, atB} = await feedOn(t)
  // n2 alone is cut off: n1 publishes its write, and n2 is not there to hear it.
  redisCli(["ACL", "SETUSER", "n2", "off"])
  redisCli(["CLIENT", "KILL", "USER", "n2"])
  await eventually(async () => !(await up("n2")), "n2's link down")
  assert.ok(await up("n1"))
  const post = await api("n1", users.dave, "POST", "/api/community/posts", {body: "while n2 alone is cut off"})
  assert.equal(post.status, 201)
  await eventually(() => atA.payloads.length === 1, "n1's own client has it")
  await sleep(QUIET_MS)
  assert.equal(atB.payloads.length, 0, "n2 cannot have it yet")
  redisCli(["ACL", "SETUSER", "n2", "on"])
  await eventually(() => atB.payloads.length >= 1, "the post reaches n2's client", 15000)
  await sleep(QUIET_MS)
  assert.deepStrictEqual(atB.payloads.map(recorded), [post.json])
  assert.equal(atB.payloads[0].seq, start + 1)
  assert.deepStrictEqual(atA.payloads, atB.payloads)
})

/** A private room of alice's with `members` added; returns its id. */
async function privateRoom(name, members){
  const room = await api("n1", users.alice, "POST", "/api/channels", {name: `${name}-${Date.now()}`, private: true})
  assert.equal(room.status, 201)
  for(const u of members){
    assert.equal((await api("n1", users.alice, "POST", `/api/channels/${room.json.id}/members`, {user_id: u.id})).status, 204)
  }
  return room.json.id
}

/** A socket of `user` on `node` with `topics` joined: every message it gets, and which channels closed. */
async function member(t, node, user, topics){
  const socket = socketOn(t, node, user)
  const messages = recordMessages(socket)
  await openSocket(socket)
  const closed = []
  for(const topic of topics){
    const ch = socket.channel(topic)
    ch.onClose(() => closed.push(topic))
    await joinOk(ch)
  }
  const channel = topic => socket.channels.find(c => c.topic === topic)
  return {socket, messages, closed, channel}
}

test("a message committed after a removal reaches no node before it: the removed user never gets it", async t => {
  const rid = await privateRoom("ordered", [users.bob, users.carol])
  const topic = `channel:${rid}`
  const bob = await member(t, "n3", users.bob, [topic])
  const carol = await member(t, "n3", users.carol, [topic])
  const alice = await member(t, "n2", users.alice, [topic])
  // n1 alone is cut off: the removal it commits reaches n3 only later, while a message
  // committed on n2 after it reaches n3 at once.
  redisCli(["ACL", "SETUSER", "n1", "off"])
  redisCli(["CLIENT", "KILL", "USER", "n1"])
  await eventually(async () => !(await up("n1")), "n1's link down")
  assert.equal((await api("n1", users.alice, "DELETE", `/api/channels/${rid}/members/${users.bob.id}`)).status, 204)
  const msg = await pushOk(alice.channel(topic), "new_message", {body: "after bob left"})
  await eventually(() => carol.messages.some(m => m.event === "new_message"), "the message reaches carol on n3")
  await sleep(QUIET_MS)
  // Bob never gets the message; carol gets the removal first, then the message.
  const ofRoom = ms => ms.filter(m => m.topic === topic && !m.event.startsWith("phx_") && !m.event.startsWith("presence"))
  assert.deepStrictEqual(ofRoom(bob.messages), [])
  await eventually(() => bob.closed.length === 1, "bob's channel closes")
  const got = ofRoom(carol.messages)
  assert.deepStrictEqual(got.map(m => m.event), ["member_removed", "new_message"])
  assert.deepStrictEqual(recorded(got[0].payload), {user_id: users.bob.id})
  assert.deepStrictEqual(recorded(got[1].payload), msg)
  assert.equal(got[1].payload.seq, got[0].payload.seq + 1)
  assert.deepStrictEqual(ofRoom(bob.messages), [])
  assert.deepStrictEqual(bob.closed, [topic])
  redisCli(["ACL", "SETUSER", "n1", "on"])
  await eventually(() => up("n1"), "n1's link back", 15000)
})

test("a thread reply committed after a removal reaches no node before it: the removed user's thread closes without it", async t => {
  const rid = await privateRoom("thread-ordered", [users.bob, users.carol, users.dave])
  const room = `channel:${rid}`
  const alice = await member(t, "n1", users.alice, [room])
  const parent = await pushOk(alice.channel(room), "new_message", {body: "a thread"})
  const thread = `thread:${parent.id}`
  const bob = await member(t, "n3", users.bob, [room, thread])
  const dave = await member(t, "n3", users.dave, [room, thread])
  const carol = await member(t, "n2", users.carol, [room])
  // n1 alone is cut off: the removal it commits (on the room's stream) reaches n3 only later,
  // while a reply committed on n2 after it (on the thread's stream) reaches n3 at once.
  redisCli(["ACL", "SETUSER", "n1", "off"])
  redisCli(["CLIENT", "KILL", "USER", "n1"])
  await eventually(async () => !(await up("n1")), "n1's link down")
  assert.equal((await api("n1", users.alice, "DELETE", `/api/channels/${rid}/members/${users.bob.id}`)).status, 204)
  const reply = await pushOk(carol.channel(room), "new_message", {body: "a reply after bob left", parent_id: parent.id})
  await eventually(() => dave.messages.some(m => m.topic === thread && m.event === "new_message"), "the reply reaches dave on n3")
  await sleep(QUIET_MS)
  const of = (ms, topic) => ms.filter(m => m.topic === topic && !m.event.startsWith("phx_") && !m.event.startsWith("presence"))
  // Bob never gets the reply, and both his channels of the room close.
  assert.deepStrictEqual(of(bob.messages, thread), [])
  assert.deepStrictEqual(of(bob.messages, room), [])
  await eventually(() => bob.closed.length === 2, () => `bob's channels close: ${bob.closed}`)
  assert.deepStrictEqual([...bob.closed].sort(), [room, thread].sort())
  // Dave gets the removal, then the reply: on the room's stream the removal and the thread's
  // new count (consecutive seqs), on the thread's the reply as the client always saw it.
  const inRoom = of(dave.messages, room)
  assert.deepStrictEqual(inRoom.map(m => m.event), ["member_removed", "thread_updated"])
  assert.deepStrictEqual(recorded(inRoom[0].payload), {user_id: users.bob.id})
  assert.deepStrictEqual(recorded(inRoom[1].payload), {message_id: parent.id, reply_count: 1, last_reply_at: reply.inserted_at})
  assert.equal(inRoom[1].payload.seq, inRoom[0].payload.seq + 1)
  const inThread = of(dave.messages, thread)
  assert.deepStrictEqual(inThread.map(m => m.event), ["new_message"])
  assert.deepStrictEqual(recorded(inThread[0].payload), reply)
  assert.ok(dave.messages.indexOf(inRoom[0]) < dave.messages.indexOf(inThread[0]), "the removal before the reply")
  assert.deepStrictEqual(of(bob.messages, thread), [])
  redisCli(["ACL", "SETUSER", "n1", "on"])
  await eventually(() => up("n1"), "n1's link back", 15000)
})

test("a removal made while Redis is down holds on every node once it is back: the removed user's channels close", async t => {
  const rid = await privateRoom("outage", [users.bob, users.carol])
  const room = `channel:${rid}`
  const alice = await member(t, "n1", users.alice, [room])
  const parent = await pushOk(alice.channel(room), "new_message", {body: "a thread"})
  const topics = [room, `thread:${parent.id}`, `voice:${rid}`, "community:feed"]
  const bob = await member(t, "n2", users.bob, topics)
  const carol = await member(t, "n2", users.carol, [room])
  await stopRedis()
  await eventually(async () => !(await up("n1")) && !(await up("n2")), "both links down")
  // Bob is removed from the room and leaves the community on n1, which cannot tell n2.
  assert.equal((await api("n1", users.alice, "DELETE", `/api/channels/${rid}/members/${users.bob.id}`)).status, 204)
  assert.equal((await api("n1", users.bob, "DELETE", "/api/community/join")).status, 204)
  await sleep(QUIET_MS)
  assert.deepStrictEqual(bob.closed, [], "n2 cannot know yet")
  await startRedis()
  await eventually(() => bob.closed.length === 4, () => `bob's channels close: ${bob.closed}`, 15000)
  assert.deepStrictEqual([...bob.closed].sort(), [...topics].sort())
  // The room goes on without him.
  await eventually(async () => await up("n1") && await up("n2"), "both links back", 15000)
  const msg = await pushOk(alice.channel(room), "new_message", {body: "after bob left"})
  await eventually(() => carol.messages.some(m => m.event === "new_message" && m.payload.id === msg.id), "carol on n2 gets it")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(bob.messages.filter(m => m.event === "new_message" || m.event === "member_removed"), [])
  assert.equal((await api("n2", users.bob, "POST", "/api/community/join")).status, 204)
})

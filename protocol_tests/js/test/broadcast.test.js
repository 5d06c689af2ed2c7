// Broadcasts between clients: community:feed (broadcast to all, sender included)
// and channel:* (new_msg to all, typing to all but the sender).

import {test} from "node:test"
import assert from "node:assert/strict"
import {
  connectSocket, joinOk, pushOk, awaitReply, nextEvent, recordEvents, sleep, uniqueId, QUIET_MS
} from "./helpers.js"

// community:feed is shared by everything that talks to the server, so payloads carry
// a unique id and waits skip other clients' posts; assertions still compare the whole payload.
const byId = id => payload => payload && payload.id === id

test("new_post on community:feed reaches both clients, and the sender gets ok {}", async t => {
  const [a, b] = await Promise.all([connectSocket(t), connectSocket(t)])
  const chanA = a.channel("community:feed")
  const chanB = b.channel("community:feed")
  await Promise.all([joinOk(chanA), joinOk(chanB)])

  const post = {body: "hi", id: uniqueId()}
  const seenByA = nextEvent(chanA, "new_post", {match: byId(post.id)})
  const seenByB = nextEvent(chanB, "new_post", {match: byId(post.id)})
  assert.deepStrictEqual(await pushOk(chanA, "new_post", post), {})
  assert.deepStrictEqual(await seenByA, post)
  assert.deepStrictEqual(await seenByB, post)
})

test("the sender receives its own broadcast before the reply to its push", async t => {
  const socket = await connectSocket(t)
  const channel = socket.channel("community:feed")
  await joinOk(channel)

  const post = {body: "order", id: uniqueId()}
  // recorded in the callbacks themselves: promise continuations run later, and out of
  // arrival order when both frames are handled in the same tick
  const order = []
  channel.on("new_post", payload => { if(byId(post.id)(payload)){ order.push("broadcast") } })
  const seen = nextEvent(channel, "new_post", {match: byId(post.id)})
  const push = channel.push("new_post", post).receive("ok", () => order.push("reply"))
  assert.deepStrictEqual(await awaitReply(push, "ok", "push new_post"), {})
  await seen
  assert.deepStrictEqual(order, ["broadcast", "reply"])
})

test("channel:* typing skips the sender, new_msg reaches everyone", async t => {
  const topic = `channel:lobby-${uniqueId()}`
  const [a, b] = await Promise.all([connectSocket(t), connectSocket(t)])
  const chanA = a.channel(topic, {user_id: "a"})
  const chanB = b.channel(topic, {user_id: "b"})
  assert.deepStrictEqual(await joinOk(chanA), {})
  assert.deepStrictEqual(await joinOk(chanB), {})
  const typingA = recordEvents(chanA, "typing")
  const typingB = recordEvents(chanB, "typing")

  const typingSeenByA = nextEvent(chanA, "typing")
  // typing and new_msg get no reply, so their push timeouts are kept short
  chanB.push("typing", {who: "b"}, 1000)
  assert.deepStrictEqual(await typingSeenByA, {who: "b"})

  const msgSeenByA = nextEvent(chanA, "new_msg")
  const msgSeenByB = nextEvent(chanB, "new_msg")
  chanB.push("new_msg", {body: "hi"}, 1000)
  assert.deepStrictEqual(await msgSeenByA, {body: "hi"})
  assert.deepStrictEqual(await msgSeenByB, {body: "hi"})

  // a wrongly echoed typing would have reached B before its new_msg; wait a little more anyway
  await sleep(QUIET_MS)
  assert.deepStrictEqual(typingB.payloads, [], "broadcast_from must not echo typing to the sender")
  assert.deepStrictEqual(typingA.payloads, [{who: "b"}])
})

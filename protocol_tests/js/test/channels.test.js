// Join, push/reply, leave and crash handling of a single client (fixture topics
// community:feed, private:*, collection:* and an unrouted topic).

import {test} from "node:test"
import assert from "node:assert/strict"
import {
  connectSocket, joinOk, joinError, pushOk, awaitReply, recordMessages,
  waitUntil, uniqueId
} from "./helpers.js"

test("join community:feed replies ok {} and ping echoes its payload", async t => {
  const socket = await connectSocket(t)
  const channel = socket.channel("community:feed")

  assert.deepStrictEqual(await joinOk(channel), {})
  assert.equal(channel.state, "joined")

  const payload = {x: 1, s: "abc", nested: {list: [1, "two", null], flag: true}}
  assert.deepStrictEqual(await pushOk(channel, "ping", payload), payload)
})

test("refused joins reply error with the reason", async t => {
  const socket = await connectSocket(t)

  const secret = socket.channel("private:secret")
  assert.deepStrictEqual(await joinError(secret), {reason: "unauthorized"})
  assert.equal(secret.state, "errored")
  // phoenix.js retries a refused join forever; leaving stops that
  await awaitReply(secret.leave(), "ok", "leave private:secret")

  const unrouted = socket.channel("nope:1")
  assert.deepStrictEqual(await joinError(unrouted), {reason: "unmatched topic"})
  await awaitReply(unrouted.leave(), "ok", "leave nope:1")
})

test("leave replies ok, fires onClose, and the server forgets the channel", async t => {
  const socket = await connectSocket(t)
  const messages = recordMessages(socket)
  const topic = "community:feed"
  const channel = socket.channel(topic)
  await joinOk(channel)
  const joinRef = channel.joinRef()

  const closed = new Promise(resolve => channel.onClose(resolve))
  // joined, so phoenix.js waits for the server's reply instead of acking locally
  assert.deepStrictEqual(await awaitReply(channel.leave(), "ok", `leave ${topic}`), {})
  await closed
  assert.equal(channel.state, "closed")
  assert.ok(!socket.channels.includes(channel), "left channel is removed from the socket")

  // the server follows the leave reply with phx_close carrying the join ref as ref and join_ref
  await waitUntil(() => messages.some(m => m.topic === topic && m.event === "phx_close"),
    "phx_close after the leave reply")
  const close = messages.find(m => m.topic === topic && m.event === "phx_close")
  assert.deepStrictEqual(close, {join_ref: joinRef, ref: joinRef, topic, event: "phx_close", payload: {}})

  // phoenix.js cannot push on a left channel, so push a raw frame with the old join ref:
  // the topic is no longer joined on this socket
  const ref = socket.makeRef()
  socket.push({topic, event: "ping", payload: {}, ref, join_ref: joinRef})
  await waitUntil(() => messages.some(m => m.ref === ref), `reply to raw ping ref ${ref}`)
  assert.deepStrictEqual(messages.find(m => m.ref === ref), {
    join_ref: null, ref, topic, event: "phx_reply",
    payload: {status: "error", response: {reason: "unmatched topic"}}
  })
})

test("a crashed channel gets phx_error and phoenix.js rejoins it", async t => {
  const socket = await connectSocket(t)
  const messages = recordMessages(socket)
  const topic = `collection:${uniqueId()}`
  const channel = socket.channel(topic)
  // this hook stays on the join push, so it also sees every rejoin reply
  const joinReplies = []
  channel.joinPush.receive("ok", response => joinReplies.push(response))
  const errors = []
  channel.onError(payload => errors.push(payload))

  assert.deepStrictEqual(await joinOk(channel), {items: []})
  const joinRef = channel.joinRef()

  // collection:* has no handle_in; the push itself is never answered, so keep its timeout short
  channel.push("whatever", {}, 500)
  await waitUntil(() => errors.length > 0, `phx_error on ${topic}`)
  // Phoenix >= 1.8.10 payload (1.7.24 sent {})
  assert.deepStrictEqual(errors[0], {reason: "channel_crash"})
  assert.deepStrictEqual(messages.find(m => m.event === "phx_error"),
    {join_ref: joinRef, ref: joinRef, topic, event: "phx_error", payload: {reason: "channel_crash"}})

  await waitUntil(() => joinReplies.length === 2 && channel.state === "joined",
    () => `rejoin after crash (join oks: ${joinReplies.length}, state: ${channel.state})`)
  assert.deepStrictEqual(joinReplies, [{items: []}, {items: []}])
  assert.notEqual(channel.joinRef(), joinRef, "rejoin uses a fresh join ref")
  assert.equal(errors.length, 1)
})

// Binary payloads: phoenix.js sends an ArrayBuffer payload as a binary V2 push
// (WebSocket: a binary frame; LongPoll: a base64 ndjson line).

import {test} from "node:test"
import assert from "node:assert/strict"
import {
  connectSocket, joinOk, awaitReply, pushOk, nextEvent, bytesOf, bufferOf, uniqueId,
  IS_WEBSOCKET
} from "./helpers.js"

const isBuffer = payload => payload instanceof ArrayBuffer

if(IS_WEBSOCKET){
  test("binary ping is echoed as an ArrayBuffer and binary new_post is broadcast as one", async t => {
    const socket = await connectSocket(t)
    const channel = socket.channel("community:feed")
    await joinOk(channel)

    const echoed = await pushOk(channel, "ping", bufferOf([1, 2, 3, 255]))
    assert.deepStrictEqual(bytesOf(echoed), [1, 2, 3, 255])

    // other clients may post JSON on the shared topic, so wait for a binary one with our bytes
    const bytes = [0, 1, 2, 3, 255, ...Buffer.from(uniqueId())]
    const same = p => isBuffer(p) && JSON.stringify(bytesOf(p)) === JSON.stringify(bytes)
    const broadcast = nextEvent(channel, "new_post", {match: same})
    assert.deepStrictEqual(await pushOk(channel, "new_post", bufferOf(bytes)), {})
    assert.deepStrictEqual(bytesOf(await broadcast), bytes)
  })
} else {
  // phoenix.js 1.8.16 cannot receive binary over LongPoll: it forces its default decoder,
  // which JSON-parses every polled message string (socket.js constructor, serializer.js
  // decode), so no encoding can hand it an ArrayBuffer. Fawkes therefore sends a binary reply or
  // broadcast to a LongPoll client as the same V2 JSON message with the payload
  // {binary: "<base64>"}; the client sends binary as base64 ndjson lines on its own.
  test("binary ping and new_post come back to a LongPoll client as {binary: base64}", async t => {
    const socket = await connectSocket(t)
    const channel = socket.channel("community:feed")
    await joinOk(channel)
    assert.deepStrictEqual(await pushOk(channel, "ping", bufferOf([1, 2, 3, 255])), {binary: "AQID/w=="})
    const bytes = Buffer.from(`bin-${uniqueId()}`)
    const expected = {binary: bytes.toString("base64")}
    const broadcast = nextEvent(channel, "new_post", {match: p => p && p.binary === expected.binary})
    assert.deepStrictEqual(await pushOk(channel, "new_post", bufferOf([...bytes])), {})
    assert.deepStrictEqual(await broadcast, expected)
  })

  // A LongPoll client's binary typing (broadcast_from, nothing comes back to the sender)
  // reaches a WebSocket peer intact, and the LongPoll session keeps working afterwards.
  test("binary push from a LongPoll client reaches a WebSocket peer as an ArrayBuffer", async t => {
    const topic = `channel:bin-${uniqueId()}`
    const lp = await connectSocket(t, {transport: "longpoll"})
    const ws = await connectSocket(t, {transport: "websocket"})
    const chanLp = lp.channel(topic, {user_id: "lp"})
    const chanWs = ws.channel(topic, {user_id: "ws"})
    await joinOk(chanLp)
    await joinOk(chanWs)

    const bytes = [1, 2, 3, 255]
    const typing = nextEvent(chanWs, "typing")
    chanLp.push("typing", bufferOf(bytes), 1000)
    assert.deepStrictEqual(bytesOf(await typing), bytes)

    const atLp = nextEvent(chanLp, "new_msg")
    const atWs = nextEvent(chanWs, "new_msg")
    chanLp.push("new_msg", {body: "after binary"}, 1000)
    assert.deepStrictEqual(await atLp, {body: "after binary"})
    assert.deepStrictEqual(await atWs, {body: "after binary"})
    // the LongPoll channel is still joined on the same session
    assert.equal(chanLp.state, "joined")
    await awaitReply(chanLp.leave(), "ok", `leave ${topic}`)
  })
}

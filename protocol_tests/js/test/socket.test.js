// Socket-level behaviour: refused connects, and reconnect + rejoin after the
// server drops the connection.

import {test} from "node:test"
import assert from "node:assert/strict"
import {
  makeSocket, connectSocket, disconnect, joinOk, pushOk, waitUntil, sleep, describe,
  IS_WEBSOCKET, IS_LONGPOLL, QUIET_MS, TIMEOUT_MS
} from "./helpers.js"

test("connect with token=bad fires onError and never onOpen", async t => {
  const socket = makeSocket({params: {token: "bad"}})
  t.after(() => disconnect(socket))
  let opens = 0
  socket.onOpen(() => opens++)
  const errors = []
  socket.onError(error => errors.push(error))

  socket.connect()
  await waitUntil(() => errors.length > 0, "socket onError for a refused connect")
  if(IS_LONGPOLL){
    // LongPoll hands the body's status to onError
    assert.equal(errors[0], 403)
  } else {
    // browsers hide the HTTP status; ws puts it in the message ("Unexpected server
    // response: 403"), which tells a refusal apart from e.g. ECONNREFUSED
    assert.match(describe(errors[0]), /\b403\b/)
  }
  // phoenix.js keeps reconnecting (every 200 ms here); those attempts must be refused too
  await sleep(QUIET_MS)
  assert.equal(opens, 0)
  assert.ok(errors.length >= 1)
})

// Only over WebSocket: the scenario is "the server closes the WebSocket (1011) on an
// undecodable frame"; a LongPoll client has no raw frame connection the server could close.
if(IS_WEBSOCKET){
  test("after the server drops the socket on a malformed frame, phoenix.js reconnects and rejoins", async t => {
    const socket = await connectSocket(t)
    let opens = 0
    socket.onOpen(() => opens++)
    const closes = []
    socket.onClose(event => closes.push(event))

    const channel = socket.channel("community:feed")
    const joinReplies = []
    channel.joinPush.receive("ok", response => joinReplies.push(response))
    const chanErrors = []
    channel.onError(payload => chanErrors.push(payload))
    await joinOk(channel)
    const firstJoinRef = channel.joinRef()

    socket.conn.send("not json")

    await waitUntil(() => closes.length > 0, "socket onClose after the malformed frame")
    assert.equal(closes[0].code, 1011)
    await waitUntil(() => chanErrors.length > 0, "channel onError after the socket closed")
    assert.deepStrictEqual(chanErrors[0], {source: "transport", reason: "connection_closed"})

    await waitUntil(() => opens === 1, "socket reopened by itself", TIMEOUT_MS)
    await waitUntil(() => joinReplies.length === 2 && channel.state === "joined",
      () => `channel rejoined (join oks: ${joinReplies.length}, state: ${channel.state})`)
    assert.deepStrictEqual(joinReplies, [{}, {}])
    assert.notEqual(channel.joinRef(), firstJoinRef)
    assert.equal(closes.length, 1, "exactly one close")

    const payload = {after: "reconnect"}
    assert.deepStrictEqual(await pushOk(channel, "ping", payload), payload)
  })
}

// An existing Phoenix app's client: phoenix.js connects with the Phoenix.Token the app minted
// (`params: {token}`), over WebSocket and LongPoll. And membership holds while a channel is
// open: a member removed from a room gets its channel closed (onClose) and no more messages.
// Run by protocol_tests/tests/phoenix_js.rs: FAWKES_APP_URL, FAWKES_USERS (alice, bob, ...)
// and FAWKES_PHOENIX_USER, {id, token} of a user signed in by a Phoenix.Token.

import {test} from "node:test"
import assert from "node:assert/strict"
import {Socket, LongPoll} from "phoenix"
import {WebSocket} from "ws"
import {disconnect, joined, joinOk, nextEvent, openSocket, pushOk, recordEvents, sleep, uniqueId, QUIET_MS} from "../helpers.js"

const BASE = process.env.FAWKES_APP_URL
const USERS = JSON.parse(process.env.FAWKES_USERS || "null")
const PHX = JSON.parse(process.env.FAWKES_PHOENIX_USER || "null")
if(!BASE || !USERS || !PHX){ throw new Error("FAWKES_APP_URL, FAWKES_USERS and FAWKES_PHOENIX_USER are required") }
const {alice, bob} = USERS

async function api(user, method, path, body){
  const resp = await fetch(BASE + path, {
    method,
    headers: {"authorization": `Bearer ${user.token}`, "content-type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await resp.text()
  return {status: resp.status, json: text ? JSON.parse(text) : null}
}

function socketFor(t, token, transport = WebSocket){
  const socket = new Socket(BASE.replace(/^http/, "ws") + "/socket", {
    transport, params: {token}, timeout: 3000, rejoinAfterMs: () => 60000, reconnectAfterMs: () => 60000
  })
  t.after(() => disconnect(socket))
  return socket
}

for(const [name, transport] of [["WebSocket", WebSocket], ["LongPoll", LongPoll]]){
  test(`phoenix.js signs in with the app's Phoenix.Token over ${name}`, async t => {
    const socket = socketFor(t, PHX.token, transport)
    await openSocket(socket)
    const summary = await joinOk(socket.channel(`user:${PHX.id}`))
    assert.deepStrictEqual(joined(summary), {unread: {}, mentions: 0})
    assert.equal((await api(PHX, "GET", "/api/me")).json.id, PHX.id, "REST takes the same token")
  })
}

test("phoenix.js with a tampered Phoenix.Token gets an error, not a socket", async t => {
  const socket = socketFor(t, PHX.token.slice(0, -2) + "xx")
  await assert.rejects(openSocket(socket), /socket error before open/)
})

test("a removed member's channel closes and receives nothing more", async t => {
  const room = (await api(alice, "POST", "/api/channels", {name: `private-${uniqueId()}`, private: true})).json
  assert.equal((await api(alice, "POST", `/api/channels/${room.id}/members`, {user_id: bob.id})).status, 204)
  const a = socketFor(t, alice.token), b = socketFor(t, bob.token)
  await openSocket(a); await openSocket(b)
  const topic = `channel:${room.id}`
  const ra = a.channel(topic), rb = b.channel(topic)
  await joinOk(ra); await joinOk(rb)
  const seen = nextEvent(rb, "new_message")
  await pushOk(ra, "new_message", {body: "before"})
  assert.equal((await seen).body, "before")

  const closed = new Promise(resolve => rb.onClose(resolve))
  const later = recordEvents(rb, "new_message")
  assert.equal((await api(alice, "DELETE", `/api/channels/${room.id}/members/${bob.id}`)).status, 204)
  await pushOk(ra, "new_message", {body: "after"})
  await closed
  assert.equal(rb.state, "closed")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(later.payloads, [], "nothing of the room after the removal")
})

// longPollFallbackMs: against a server that refuses WebSocket upgrades, phoenix.js must fall
// back to LongPoll by itself and work. Needs FAWKES_WS_REFUSED_URL (a socket whose WebSocket
// transport is off), so it runs from `npm run test:fallback`, not `npm test`.

import {test} from "node:test"
import assert from "node:assert/strict"
import {Socket} from "phoenix"
import {WebSocket} from "ws"
import {joinOk, pushOk, disconnect, uniqueId} from "../helpers.js"

const URL = process.env.FAWKES_WS_REFUSED_URL
if(!URL){ throw new Error("FAWKES_WS_REFUSED_URL must name a socket that refuses WebSocket upgrades") }

test("with WebSocket refused, longPollFallbackMs falls back to LongPoll and works", async t => {
  // phoenix.js remembers a fallback in sessionStorage; Node has none, so each run starts fresh.
  const socket = new Socket(URL, {
    transport: WebSocket,
    longPollFallbackMs: 300,
    params: {token: `t-${uniqueId()}`},
    timeout: 3000,
    reconnectAfterMs: () => 100
  })
  t.after(() => disconnect(socket))
  const opened = new Promise(resolve => socket.onOpen(resolve))
  socket.connect()
  await opened
  assert.equal(socket.transportName(socket.transport), "LongPoll")
  const channel = socket.channel("community:feed")
  await joinOk(channel)
  assert.deepStrictEqual(await pushOk(channel, "ping", {via: "fallback"}), {via: "fallback"})
})

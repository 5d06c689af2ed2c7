// Shared harness: builds phoenix.js sockets from the environment and turns the
// callback API (receive/on/onOpen) into promises that reject with a clear message
// instead of hanging.
//
//   FAWKES_URL        socket endpoint WITHOUT "/websocket" (phoenix.js appends it)
//                     default ws://127.0.0.1:4000/socket
//   FAWKES_TRANSPORT  websocket (default) | longpoll
//   FAWKES_DEBUG      set to 1 to get phoenix.js' own log on stdout

import {randomBytes} from "node:crypto"
import {Socket, LongPoll, Presence} from "phoenix"
import {WebSocket} from "ws"

export const SOCKET_URL = process.env.FAWKES_URL || "ws://127.0.0.1:4000/socket"
export const TRANSPORT = (process.env.FAWKES_TRANSPORT || "websocket").toLowerCase()
if(TRANSPORT !== "websocket" && TRANSPORT !== "longpoll"){
  throw new Error(`FAWKES_TRANSPORT must be "websocket" or "longpoll", got "${TRANSPORT}"`)
}
export const IS_WEBSOCKET = TRANSPORT === "websocket"
export const IS_LONGPOLL = TRANSPORT === "longpoll"

// Push/join timeout handed to phoenix.js; our own waits use it too.
export const TIMEOUT_MS = 3000
// How long we wait to be reasonably sure that something does NOT arrive.
export const QUIET_MS = 300

export function uniqueId(){ return randomBytes(6).toString("hex") }

export function sleep(ms){ return new Promise(resolve => setTimeout(resolve, ms)) }

/** Bytes of an ArrayBuffer as a plain array, for deepStrictEqual. */
export function bytesOf(buffer){
  if(!(buffer instanceof ArrayBuffer)){
    throw new Error(`expected an ArrayBuffer, got ${describe(buffer)}`)
  }
  return Array.from(new Uint8Array(buffer))
}

export function bufferOf(bytes){ return new Uint8Array(bytes).buffer }

export function describe(value){
  if(value instanceof ArrayBuffer){ return `ArrayBuffer[${Array.from(new Uint8Array(value)).join(",")}]` }
  if(value instanceof Error){ return value.message }
  if(value && typeof value === "object" && "message" in value){ return String(value.message) }
  try { return JSON.stringify(value) } catch { return String(value) }
}

/**
 * A phoenix Socket for FAWKES_URL (not connected yet). `transport` overrides
 * FAWKES_TRANSPORT for tests that need a specific one; other options are passed
 * through to phoenix.js. Every socket gets its own token so socket ids differ.
 */
export function makeSocket({transport = TRANSPORT, params = {}, ...opts} = {}){
  return new Socket(SOCKET_URL, {
    // Node 20 has no global WebSocket, so phoenix.js must be given one.
    transport: transport === "longpoll" ? LongPoll : WebSocket,
    params: {token: `t-${uniqueId()}`, ...params},
    timeout: TIMEOUT_MS,
    heartbeatIntervalMs: 30000,
    reconnectAfterMs: () => 200,
    rejoinAfterMs: () => 200,
    debug: process.env.FAWKES_DEBUG === "1",
    ...opts
  })
}

/**
 * Builds a socket, registers its disconnect as cleanup of test `t` (so it runs
 * even when the test fails) and waits until it is open.
 */
export async function connectSocket(t, opts = {}){
  const socket = makeSocket(opts)
  // a test failing while this socket still connects must not leave its wait running
  const cancel = new AbortController()
  t.after(() => {
    cancel.abort()
    return disconnect(socket)
  })
  await openSocket(socket, {signal: cancel.signal})
  return socket
}

/** Connects `socket` and resolves once it is open; rejects on a transport error. */
export function openSocket(socket, {timeout = TIMEOUT_MS, signal} = {}){
  const longpoll = socket.transport === LongPoll
  const where = `${SOCKET_URL} (${longpoll ? "longpoll" : "websocket"})`
  return new Promise((resolve, reject) => {
    const refs = []
    let done = false
    const settle = (fn, value) => {
      if(done){ return }
      done = true
      clearTimeout(timer)
      socket.off(refs)
      fn(value)
    }
    const timer = setTimeout(() => settle(reject, new Error(`socket did not open within ${timeout} ms: ${where}`)), timeout)
    signal && signal.addEventListener("abort", () => settle(reject, new Error(`socket closed before open: ${where}`)))
    refs.push(socket.onOpen(() => settle(resolve, socket)))
    refs.push(socket.onError(err => {
      // phoenix.js' LongPoll reports any failed request, including "connection refused", as 500
      const hint = longpoll && err === 500 ? " (LongPoll: network error or HTTP 500)" : ""
      settle(reject, new Error(`socket error before open: ${where}: ${describe(err)}${hint}`))
    }))
    socket.connect()
  })
}

/** Disconnects and resolves once phoenix.js has torn the transport down. */
export function disconnect(socket){
  return new Promise(resolve => socket.disconnect(() => resolve()))
}

/**
 * Waits for `status` on a Push (join, leave or push) and resolves with the
 * response; any other status, or no reply, rejects.
 */
export function awaitReply(push, status, label, timeout = TIMEOUT_MS + 500){
  const promise = new Promise((resolve, reject) => {
    let done = false
    const settle = (fn, value) => {
      if(done){ return }
      done = true
      clearTimeout(timer)
      fn(value)
    }
    // backstop in case phoenix.js' own push timeout never fires
    const timer = setTimeout(() => settle(reject, new Error(`${label}: no reply within ${timeout} ms`)), timeout)
    for(const s of ["ok", "error", "timeout"]){
      push.receive(s, response => {
        if(s === status){
          settle(resolve, response)
        } else {
          settle(reject, new Error(`${label}: expected "${status}", got "${s}" ${describe(response)}`))
        }
      })
    }
  })
  promise.catch(() => {}) // the caller may await it later; never an unhandled rejection
  return promise
}

export function joinOk(channel){
  return awaitReply(channel.join(), "ok", `join ${channel.topic}`)
}

export function joinError(channel){
  return awaitReply(channel.join(), "error", `join ${channel.topic}`)
}

export function pushOk(channel, event, payload){
  return awaitReply(channel.push(event, payload), "ok", `push ${event} on ${channel.topic}`)
}

/**
 * Resolves with the payload of the next `event` on `channel` (optionally the
 * next one for which `match(payload)` is true). Call it BEFORE triggering the
 * event.
 */
export function nextEvent(channel, event, {match = () => true, timeout = TIMEOUT_MS} = {}){
  const promise = new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      channel.off(event, ref)
      reject(new Error(`no "${event}" on ${channel.topic} within ${timeout} ms`))
    }, timeout)
    const ref = channel.on(event, payload => {
      if(!match(payload)){ return }
      clearTimeout(timer)
      channel.off(event, ref)
      resolve(payload)
    })
  })
  promise.catch(() => {})
  return promise
}

/** Counts `event`s on `channel`; `.payloads` keeps them for assertions. */
export function recordEvents(channel, event){
  const record = {payloads: []}
  channel.on(event, payload => record.payloads.push(payload))
  return record
}

/** Every decoded message the socket receives, whatever channel it is for. */
export function recordMessages(socket){
  const messages = []
  socket.onMessage(msg => messages.push(msg))
  return messages
}

/** Polls `predicate` until it returns true; rejects with `message()` on timeout. */
export async function waitUntil(predicate, message, timeout = TIMEOUT_MS){
  const deadline = Date.now() + timeout
  while(!predicate()){
    if(Date.now() > deadline){
      throw new Error(`timed out after ${timeout} ms: ${typeof message === "function" ? message() : message}`)
    }
    await sleep(20)
  }
}

/**
 * A recorded broadcast's payload (community:feed, channel:, thread:, user:) without its
 * `seq`, after checking that the seq is there: a positive integer.
 */
export function recorded(payload){
  if(!Number.isInteger(payload?.seq) || payload.seq < 1){
    throw new Error(`expected a recorded event with a seq, got ${describe(payload)}`)
  }
  const {seq, ...rest} = payload
  return rest
}

/** A join reply of a recorded topic without its latest `seq`, after checking it is there. */
export function joined(reply){
  if(!Number.isInteger(reply?.seq) || reply.seq < 0){
    throw new Error(`expected a join reply with the topic's seq, got ${describe(reply)}`)
  }
  const {seq, ...rest} = reply
  return rest
}

/**
 * A Presence on `channel` (made before its join, to see the presence_state) and the keys it saw
 * arrive (`joins`) and go entirely (`leaves`), in order.
 */
export function watchKeys(channel){
  const presence = new Presence(channel)
  const seen = {joins: [], leaves: []}
  presence.onJoin((key, current) => { if(!current){ seen.joins.push(key) } })
  presence.onLeave((key, current) => { if(current.metas.length === 0){ seen.leaves.push(key) } })
  return {presence, seen}
}

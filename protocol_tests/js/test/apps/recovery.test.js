// Recovery after a reconnect, as a client author writes it with phoenix.js: the channel's
// params are a function of the last seq seen, so every rejoin asks for what it missed.
// Run by protocol_tests/tests/phoenix_js.rs: FAWKES_APP_URL, FAWKES_MEMBER_TOKEN and
// FAWKES_OTHER_TOKEN (community members), FAWKES_USERS (alice, bob, ...). The suite's server
// keeps only 2 events per thread: topic, so a thread can be missed past its retention.

import {test} from "node:test"
import assert from "node:assert/strict"
import {Socket} from "phoenix"
import {WebSocket} from "ws"
import {disconnect, joinOk, openSocket, pushOk, sleep, waitUntil} from "../helpers.js"

const BASE = process.env.FAWKES_APP_URL
const MEMBER = process.env.FAWKES_MEMBER_TOKEN
const OTHER = process.env.FAWKES_OTHER_TOKEN
const USERS = JSON.parse(process.env.FAWKES_USERS || "null")
if(!BASE || !MEMBER || !OTHER || !USERS){ throw new Error("FAWKES_APP_URL, FAWKES_MEMBER_TOKEN, FAWKES_OTHER_TOKEN and FAWKES_USERS are required") }
// Each test pushes as its own user: chat limits messages per user (10 per 10 s).
const {alice, bob, carol} = USERS

async function api(token, method, path, body){
  const resp = await fetch(BASE + path, {
    method,
    headers: {"authorization": `Bearer ${token}`, "content-type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await resp.text()
  return {status: resp.status, json: text ? JSON.parse(text) : null}
}

/** Every post's id, paging through the REST list. */
async function allPostIds(token){
  const ids = []
  let before = ""
  for(;;){
    const page = (await api(token, "GET", `/api/community/posts?limit=100${before}`)).json
    ids.push(...page.items.map(p => p.id))
    if(page.next_before === null){ return ids.sort((a, b) => a - b) }
    before = `&before=${page.next_before}`
  }
}

function socketFor(t, token){
  const socket = new Socket(BASE.replace(/^http/, "ws") + "/socket", {
    transport: WebSocket, params: {token}, timeout: 3000, rejoinAfterMs: () => 100, reconnectAfterMs: () => 100
  })
  t.after(() => disconnect(socket))
  return socket
}

/**
 * A channel that recovers: it remembers the last seq seen, rejoins with `since`, applies the
 * reply's `missed` events in order, and reports a `reset`. Every event, live or missed, goes
 * through `onEvent(event, payload)` once.
 */
function recoveringChannel(socket, topic, events, onEvent){
  const state = {last: null, resets: 0, joins: 0}
  const channel = socket.channel(topic, () => state.last === null ? {} : {since: state.last})
  const apply = (event, payload) => {
    assert.equal(payload.seq, state.last + 1, `${topic}: ${event} seq ${payload.seq} after ${state.last}`)
    state.last = payload.seq
    onEvent(event, payload)
  }
  for(const event of events){
    channel.on(event, payload => apply(event, payload))
  }
  channel.join().receive("ok", reply => {
    state.joins++
    if(reply.reset){ state.resets++; state.last = reply.seq; return }
    for(const m of reply.missed || []){ apply(m.event, m.payload) }
    state.last = reply.seq
  })
  return {channel, state}
}

test("a client whose socket drops gets exactly what it missed, in order, once", async t => {
  const room = (await api(alice.token, "POST", "/api/channels", {name: `recovery-${Date.now()}`})).json
  assert.equal((await api(bob.token, "POST", `/api/channels/${room.id}/members`, {user_id: bob.id})).status, 204)
  const aSock = socketFor(t, alice.token)
  await openSocket(aSock)
  const seen = []
  const log = topic => (event, payload) => seen.push({topic, event, payload})

  const feedSock = socketFor(t, MEMBER), chatSock = socketFor(t, bob.token)
  await openSocket(feedSock); await openSocket(chatSock)
  const parent = (await api(alice.token, "GET", `/api/channels/${room.id}/messages`)).json
  assert.deepStrictEqual(parent.items, [])
  const aRoom = aSock.channel(`channel:${room.id}`)
  await joinOk(aRoom)
  const threadParent = await pushOk(aRoom, "new_message", {body: "a thread"})
  const subs = [
    recoveringChannel(feedSock, "community:feed", ["new_post", "post_updated", "post_deleted", "post_likes_updated", "post_comments_updated"], log("feed")),
    recoveringChannel(chatSock, `channel:${room.id}`, ["new_message", "message_updated", "message_deleted", "reactions_updated", "read_receipt", "thread_updated"], log("room")),
    recoveringChannel(chatSock, `thread:${threadParent.id}`, ["new_message", "message_updated", "message_deleted"], log("thread")),
    recoveringChannel(chatSock, `user:${bob.id}`, ["mention", "unread_updated"], log("user"))
  ]
  await waitUntil(() => subs.every(s => s.state.joins === 1), "all joined")
  const before = seen.length

  // The network drops; meanwhile three posts, two messages, a thread reply and a mention.
  await disconnect(feedSock); await disconnect(chatSock)
  const posts = []
  for(let i = 0; i < 3; i++){
    posts.push((await api(OTHER, "POST", "/api/community/posts", {body: `while away ${i}`})).json)
  }
  const push = body => pushOk(aRoom, "new_message", body)
  const m1 = await push({body: "first"})
  const m2 = await push({body: "hey @bob"})
  const reply = await push({body: "in the thread", parent_id: threadParent.id})
  feedSock.connect(); chatSock.connect()
  await waitUntil(() => subs.every(s => s.state.joins === 2), "all rejoined with since", 5000)
  await sleep(300)

  const got = seen.slice(before)
  const of = (topic, event) => got.filter(e => e.topic === topic && e.event === event).map(e => e.payload)
  assert.deepStrictEqual(of("feed", "new_post").map(p => p.id), posts.map(p => p.id))
  assert.deepStrictEqual(of("room", "new_message").map(p => p.id), [m1.id, m2.id])
  assert.deepStrictEqual(of("thread", "new_message").map(p => p.id), [reply.id])
  assert.deepStrictEqual(of("user", "mention").map(p => p.message.id), [m2.id])
  assert.ok(subs.every(s => s.state.resets === 0))
})

test("past its retention a client is told to reset", async t => {
  const room = (await api(carol.token, "POST", "/api/channels", {name: `retention-${Date.now()}`})).json
  const aSock = socketFor(t, carol.token), bSock = socketFor(t, bob.token)
  await openSocket(aSock); await openSocket(bSock)
  const aRoom = aSock.channel(`channel:${room.id}`)
  await joinOk(aRoom)
  const parent = await pushOk(aRoom, "new_message", {body: "parent"})
  const sub = recoveringChannel(bSock, `thread:${parent.id}`, ["new_message"], () => {})
  await waitUntil(() => sub.state.joins === 1, "joined")
  await disconnect(bSock)
  for(let i = 0; i < 3; i++){
    await pushOk(aRoom, "new_message", {body: `r${i}`, parent_id: parent.id})
  }
  bSock.connect()
  await waitUntil(() => sub.state.joins === 2, "rejoined", 5000)
  assert.equal(sub.state.resets, 1, "three replies, two kept: the client must refetch over REST")
})

test("with writers racing the rejoins, a client's view ends equal to the database", async t => {
  const sock = socketFor(t, MEMBER)
  await openSocket(sock)
  const view = new Set()
  const sub = recoveringChannel(sock, "community:feed", ["new_post", "post_deleted", "post_updated", "post_likes_updated", "post_comments_updated"], (event, p) => {
    if(event === "new_post"){ view.add(p.id) }
    if(event === "post_deleted"){ view.delete(p.id) }
  })
  await waitUntil(() => sub.state.joins === 1, "joined")
  // Start from the database as it is, then follow the stream.
  for(const id of await allPostIds(MEMBER)){ view.add(id) }
  let writing = true
  const writer = (async () => {
    let n = 0
    while(writing && n < 60){
      const p = (await api(OTHER, "POST", "/api/community/posts", {body: `race ${n++}`})).json
      if(n % 3 === 0){ await api(OTHER, "DELETE", `/api/community/posts/${p.id}`) }
    }
  })()
  for(let i = 0; i < 4; i++){
    await sleep(100)
    await disconnect(sock)
    await sleep(50)
    sock.connect()
    await waitUntil(() => sub.state.joins === i + 2, `rejoin ${i + 1}`, 5000)
  }
  writing = false
  await writer
  await sleep(300)
  assert.equal(sub.state.resets, 0)
  assert.deepStrictEqual([...view].sort((a, b) => a - b), await allPostIds(MEMBER))
})

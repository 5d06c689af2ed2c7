// Chat as a Slack-style web app uses it, with three users (and a fourth for the rate limit):
// rooms over REST; messages, edits, deletes, reactions, read receipts, threads, typing,
// presence, status, mentions and voice signaling through phoenix.js.
// Run by protocol_tests/tests/phoenix_js.rs: FAWKES_APP_URL and FAWKES_USERS, a JSON object
// {name: {id, token}} for alice, bob, carol and dave.

import {test, before} from "node:test"
import assert from "node:assert/strict"
import {isDeepStrictEqual} from "node:util"
import {Socket, Presence} from "phoenix"
import {WebSocket} from "ws"
import {awaitReply, disconnect, joinOk, nextEvent, openSocket, pushOk, recordEvents, sleep, uniqueId, waitUntil, joined, recorded} from "../helpers.js"

const BASE = process.env.FAWKES_APP_URL
const USERS = JSON.parse(process.env.FAWKES_USERS || "null")
if(!BASE || !USERS){ throw new Error("FAWKES_APP_URL and FAWKES_USERS are required") }
const {alice, bob, carol, dave} = USERS

async function api(user, method, path, body){
  const resp = await fetch(BASE + path, {
    method,
    headers: {"authorization": `Bearer ${user.token}`, "content-type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await resp.text()
  return {status: resp.status, json: text ? JSON.parse(text) : null}
}

async function connect(t, user){
  const socket = new Socket(BASE.replace(/^http/, "ws") + "/socket", {
    transport: WebSocket, params: {token: user.token}, timeout: 3000, rejoinAfterMs: () => 60000
  })
  t.after(() => disconnect(socket))
  await openSocket(socket)
  return socket
}

async function pushError(channel, event, payload){
  return awaitReply(channel.push(event, payload), "error", `push ${event}`)
}

/** A join that must be refused; leaves so phoenix.js stops retrying. */
async function refused(channel){
  const reply = await awaitReply(channel.join(), "error", `join ${channel.topic}`)
  channel.leave()
  return reply
}

let general, secret
before(async () => {
  const created = await api(alice, "POST", "/api/channels", {name: `general-${uniqueId()}`, private: false})
  assert.equal(created.status, 201)
  general = created.json
  assert.deepStrictEqual(Object.keys(general).sort(), ["id", "name", "private", "unread_count"])
  for(const u of [bob, carol, dave]){
    assert.equal((await api(u, "POST", `/api/channels/${general.id}/members`, {user_id: u.id})).status, 204)
  }
  secret = (await api(alice, "POST", "/api/channels", {name: "secret", private: true})).json
  assert.equal((await api(alice, "POST", `/api/channels/${secret.id}/members`, {user_id: bob.id})).status, 204)
})

test("messages, edits, deletes, reactions and read receipts reach the room", async t => {
  const [a, b, c] = await Promise.all([alice, bob, carol].map(u => connect(t, u)))
  const topic = `channel:${general.id}`
  const ra = a.channel(topic), rb = b.channel(topic), rc = c.channel(topic)
  for(const ch of [ra, rb, rc]){
    const reply = await joinOk(ch)
    assert.ok(Array.isArray(reply.messages))
    assert.ok("last_read_id" in reply)
  }

  const atB = nextEvent(rb, "new_message"), atC = nextEvent(rc, "new_message")
  const msg = await pushOk(ra, "new_message", {body: "hello room"})
  assert.deepStrictEqual(Object.keys(msg).sort(), ["author_name", "body", "edited_at", "id", "inserted_at", "parent_id", "reactions", "reply_count", "room_id", "user_id"])
  assert.equal(msg.author_name, "alice")
  assert.equal(msg.edited_at, null)
  assert.deepStrictEqual(recorded(await atB), msg)
  assert.deepStrictEqual(recorded(await atC), msg)

  assert.deepStrictEqual(await pushError(rb, "edit_message", {id: msg.id, body: "not mine"}), {reason: "forbidden"})
  const updated = nextEvent(rc, "message_updated")
  const edited = await pushOk(ra, "edit_message", {id: msg.id, body: "hello, room"})
  assert.equal(edited.body, "hello, room")
  assert.ok(edited.edited_at)
  assert.deepStrictEqual(recorded(await updated), edited)

  // Each toggle's reply carries the reactions, and the same payload reaches the others (an
  // earlier toggle's broadcast may still be on its way to them, so wait for this one's).
  const toggle = async (by, watcher, reactions) => {
    const expected = {message_id: msg.id, reactions}
    const seen = nextEvent(watcher, "reactions_updated", {match: p => isDeepStrictEqual(recorded(p), expected)})
    assert.deepStrictEqual(await pushOk(by, "react", {message_id: msg.id, emoji: "👍"}), expected)
    assert.deepStrictEqual(recorded(await seen), expected)
  }
  await toggle(rb, rc, [{emoji: "👍", count: 1, user_ids: [bob.id]}])
  await toggle(rc, rb, [{emoji: "👍", count: 2, user_ids: [bob.id, carol.id]}])
  await toggle(rb, ra, [{emoji: "👍", count: 1, user_ids: [carol.id]}])

  const receipt = nextEvent(ra, "read_receipt")
  await pushOk(rc, "mark_read", {message_id: msg.id})
  assert.deepStrictEqual(recorded(await receipt), {user_id: carol.id, message_id: msg.id})

  assert.deepStrictEqual(await pushError(rb, "delete_message", {id: msg.id}), {reason: "forbidden"})
  const deleted = nextEvent(rb, "message_deleted")
  assert.deepStrictEqual(await pushOk(ra, "delete_message", {id: msg.id}), {id: msg.id})
  assert.deepStrictEqual(recorded(await deleted), {id: msg.id})

  const history = await pushOk(rb, "load_history", {limit: 10})
  assert.ok(history.messages.every(m => m.id !== msg.id))
  assert.deepStrictEqual(await pushError(rb, "new_message", {body: "   "}), {reason: "body can't be blank"})
  assert.deepStrictEqual(await pushError(rb, "new_message", {body: "x".repeat(4001)}), {reason: "body should be at most 4000 character(s)"})
})

test("a thread reply goes to thread:<id>, and the room gets thread_updated", async t => {
  const [a, b, c] = await Promise.all([alice, bob, carol].map(u => connect(t, u)))
  const room = `channel:${general.id}`
  const ra = a.channel(room), rc = c.channel(room)
  await joinOk(ra); await joinOk(rc)
  const parent = await pushOk(ra, "new_message", {body: "thread starter"})
  const th = b.channel(`thread:${parent.id}`)
  assert.deepStrictEqual(joined(await joinOk(th)), {messages: [parent]})

  const inThread = nextEvent(th, "new_message")
  const roomNews = recordEvents(ra, "new_message")
  const threadUpdated = nextEvent(ra, "thread_updated")
  const reply = await pushOk(rc, "new_message", {body: "a reply", parent_id: parent.id})
  assert.equal(reply.parent_id, parent.id)
  assert.deepStrictEqual(recorded(await inThread), reply)
  assert.deepStrictEqual(recorded(await threadUpdated), {message_id: parent.id, reply_count: 1, last_reply_at: reply.inserted_at})
  assert.equal(roomNews.payloads.length, 0, "a reply is not a room message")
  const [again] = (await pushOk(ra, "load_history", {limit: 1})).messages
  assert.equal(again.reply_count, 1)
})

test("typing reaches everyone but the typist and ends by itself after 5 s, or on leave", async t => {
  const [a, b] = await Promise.all([alice, bob].map(u => connect(t, u)))
  const topic = `channel:${general.id}`
  const ra = a.channel(topic), rb = b.channel(topic)
  await joinOk(ra); await joinOk(rb)
  const ownTyping = recordEvents(rb, "typing")
  const started = nextEvent(ra, "typing")
  await pushOk(rb, "typing_start", {})
  assert.deepStrictEqual(await started, {user_id: bob.id, typing: true})
  const t0 = Date.now()
  assert.deepStrictEqual(await nextEvent(ra, "typing", {timeout: 7000}), {user_id: bob.id, typing: false})
  const took = Date.now() - t0
  assert.ok(took > 4500 && took < 6500, `typing expired after ${took} ms`)

  let restarted = nextEvent(ra, "typing")
  await pushOk(rb, "typing_start", {})
  assert.deepStrictEqual(await restarted, {user_id: bob.id, typing: true})
  const stopped = nextEvent(ra, "typing")
  await pushOk(rb, "typing_stop", {})
  assert.deepStrictEqual(await stopped, {user_id: bob.id, typing: false})

  restarted = nextEvent(ra, "typing")
  await pushOk(rb, "typing_start", {})
  await restarted
  const gone = nextEvent(ra, "typing")
  await awaitReply(rb.leave(), "ok", "leave")
  assert.deepStrictEqual(await gone, {user_id: bob.id, typing: false})
  assert.equal(ownTyping.payloads.length, 0, "the typist never gets its own typing")
})

test("presence: one key per user, one meta per tab, and set_status updates it", async t => {
  const [a1, a2, b] = await Promise.all([alice, alice, bob].map(u => connect(t, u)))
  const topic = `channel:${general.id}`
  const watcher = b.channel(topic)
  const presence = new Presence(watcher)
  await joinOk(watcher)
  const tab1 = a1.channel(topic), tab2 = a2.channel(topic)
  await joinOk(tab1); await joinOk(tab2)
  const metasOf = id => (presence.list((key, {metas}) => ({key, metas})).find(p => p.key === String(id)) || {metas: []}).metas
  await waitUntil(() => metasOf(alice.id).length === 2, () => `two metas for alice: ${JSON.stringify(presence.list())}`)
  assert.ok(metasOf(alice.id).every(m => m.status === "online" && typeof m.online_at === "string" && typeof m.phx_ref === "string"))
  await pushOk(tab2, "set_status", {status: "away"})
  await waitUntil(() => metasOf(alice.id).map(m => m.status).sort().join() === "away,online", "one tab away")
  assert.deepStrictEqual(await pushError(tab2, "set_status", {status: "asleep"}), {reason: "status must be online, away or busy"})
  await awaitReply(tab1.leave(), "ok", "leave")
  await waitUntil(() => metasOf(alice.id).length === 1 && metasOf(alice.id)[0].status === "away", "one tab left")
})

test("@name, @here and @everyone notify on user:<id>, with unread counts", async t => {
  const [a, b, c] = await Promise.all([alice, bob, carol].map(u => connect(t, u)))
  const ub = b.channel(`user:${bob.id}`), uc = c.channel(`user:${carol.id}`)
  const start = await joinOk(ub)
  assert.deepStrictEqual(Object.keys(start).sort(), ["mentions", "seq", "unread"])
  assert.equal(typeof start.unread[String(general.id)], "number")
  await joinOk(uc)
  const room = a.channel(`channel:${general.id}`), bobRoom = b.channel(`channel:${general.id}`)
  await joinOk(room); await joinOk(bobRoom)

  const mention = nextEvent(ub, "mention")
  const unread = nextEvent(ub, "unread_updated")
  const carolUnread = nextEvent(uc, "unread_updated")
  const carolMentions = recordEvents(uc, "mention")
  const msg = await pushOk(room, "new_message", {body: "hey @bob, look"})
  assert.deepStrictEqual(recorded(await mention), {message: msg, channel_id: general.id})
  const u1 = await unread
  assert.equal(u1.channel_id, general.id)
  assert.equal((await carolUnread).channel_id, general.id)

  // @here: bob is in the room, carol is not.
  const here = nextEvent(ub, "mention", {match: p => p.message.body.includes("@here")})
  const hereMsg = await pushOk(room, "new_message", {body: "@here standup"})
  assert.equal((await here).message.id, hereMsg.id)
  await sleep(200)
  assert.equal(carolMentions.payloads.length, 0, "carol is not here")

  // @everyone: every member but the author.
  const everyoneB = nextEvent(ub, "mention", {match: p => p.message.body.includes("@everyone")})
  const everyoneC = nextEvent(uc, "mention", {match: p => p.message.body.includes("@everyone")})
  const all = await pushOk(room, "new_message", {body: "@everyone release"})
  assert.equal((await everyoneB).message.id, all.id)
  assert.equal((await everyoneC).message.id, all.id)

  // mark_read clears them and the unread count.
  const cleared = nextEvent(ub, "unread_updated", {match: p => p.count === 0})
  const read = await pushOk(bobRoom, "mark_read", {message_id: all.id})
  assert.deepStrictEqual(recorded(await cleared), {channel_id: general.id, count: 0})
  assert.equal(read.mentions, 0)

  // Only bob may join user:<bob>.
  assert.deepStrictEqual(await refused(a.channel(`user:${bob.id}`)), {reason: "unauthorized"})
})

test("over 10 messages in 10 s a user is rate limited and nothing is stored", async t => {
  const d = await connect(t, dave)
  const room = d.channel(`channel:${general.id}`)
  await joinOk(room)
  for(let i = 0; i < 10; i++){ await pushOk(room, "new_message", {body: `burst ${i}`}) }
  const limited = await pushError(room, "new_message", {body: "one too many"})
  assert.equal(limited.reason, "rate_limited")
  assert.ok(limited.retry_after_ms > 0 && limited.retry_after_ms <= 10000, JSON.stringify(limited))
  const {messages} = await pushOk(room, "load_history", {limit: 20})
  assert.ok(!messages.some(m => m.body === "one too many"))
})

test("a non-member cannot reach a private room, its history, threads or voice", async t => {
  const [b, c] = await Promise.all([bob, carol].map(u => connect(t, u)))
  const rb = b.channel(`channel:${secret.id}`)
  await joinOk(rb)
  const hidden = await pushOk(rb, "new_message", {body: "secret stuff"})
  const denied = {reason: "unauthorized"}
  assert.deepStrictEqual(await refused(c.channel(`channel:${secret.id}`)), denied)
  assert.deepStrictEqual(await refused(c.channel(`thread:${hidden.id}`)), denied)
  assert.deepStrictEqual(await refused(c.channel(`voice:${secret.id}`)), denied)
  assert.equal((await api(carol, "GET", `/api/channels/${secret.id}/messages`)).status, 403)
  assert.equal((await api(carol, "POST", `/api/channels/${secret.id}/members`, {user_id: carol.id})).status, 403)
  const listed = (await api(carol, "GET", "/api/channels")).json.items.map(r => r.id)
  assert.ok(listed.includes(general.id) && !listed.includes(secret.id))
})

test("voice signaling reaches only its target, with from added", async t => {
  const [a, b, c] = await Promise.all([alice, bob, carol].map(u => connect(t, u)))
  const topic = `voice:${general.id}`
  const va = a.channel(topic), vb = b.channel(topic), vc = c.channel(topic)
  await joinOk(va)
  const joined = nextEvent(va, "peer_joined")
  await joinOk(vb)
  assert.deepStrictEqual(await joined, {user_id: bob.id})
  // Presence must listen before the join, to see the presence_state that follows it.
  const presence = new Presence(vc)
  await joinOk(vc)
  const carolGot = [...["sdp_offer", "sdp_answer", "ice_candidate"]].map(e => recordEvents(vc, e))

  const offer = nextEvent(vb, "sdp_offer")
  await pushOk(va, "sdp_offer", {to: bob.id, sdp: "v=0 offer"})
  assert.deepStrictEqual(await offer, {to: bob.id, sdp: "v=0 offer", from: alice.id})
  const answer = nextEvent(va, "sdp_answer")
  await pushOk(vb, "sdp_answer", {to: alice.id, sdp: "v=0 answer"})
  assert.deepStrictEqual(await answer, {to: alice.id, sdp: "v=0 answer", from: bob.id})
  const ice = nextEvent(vb, "ice_candidate")
  await pushOk(va, "ice_candidate", {to: bob.id, candidate: "candidate:1"})
  assert.deepStrictEqual(await ice, {to: bob.id, candidate: "candidate:1", from: alice.id})
  assert.deepStrictEqual(await pushError(va, "sdp_offer", {to: dave.id, sdp: "x"}), {reason: "that user is not in the voice room"})
  // Signaling payloads are bounded (64 KiB by default).
  assert.deepStrictEqual(await pushError(va, "sdp_offer", {to: bob.id, sdp: "v".repeat(70000)}), {reason: "payload over 65536 bytes"})
  await sleep(200)
  assert.deepStrictEqual(carolGot.map(r => r.payloads.length), [0, 0, 0])

  await pushOk(vb, "set_mute", {muted: true, deafened: false})
  await waitUntil(() => {
    const m = presence.list((k, {metas}) => ({k, metas})).find(p => p.k === String(bob.id))
    return m && m.metas[0].muted === true
  }, "bob muted")
  const left = nextEvent(va, "peer_left")
  await awaitReply(vb.leave(), "ok", "leave")
  assert.deepStrictEqual(await left, {user_id: bob.id})
})

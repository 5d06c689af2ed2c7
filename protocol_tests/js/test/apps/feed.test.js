// The community feed as an app uses it: REST writes with a bearer token, live events on
// community:feed through phoenix.js. Run by protocol_tests/tests/phoenix_js.rs, which starts
// `fawkes serve`'s apps and creates the users: FAWKES_APP_URL (http://host:port),
// FAWKES_MEMBER_TOKEN and FAWKES_OTHER_TOKEN (two community members).

import {test} from "node:test"
import assert from "node:assert/strict"
import {Socket} from "phoenix"
import {WebSocket} from "ws"
import {joinOk, joined, nextEvent, disconnect, openSocket, recorded} from "../helpers.js"

const BASE = process.env.FAWKES_APP_URL
const MEMBER = process.env.FAWKES_MEMBER_TOKEN
const OTHER = process.env.FAWKES_OTHER_TOKEN
if(!BASE || !MEMBER || !OTHER){ throw new Error("FAWKES_APP_URL, FAWKES_MEMBER_TOKEN and FAWKES_OTHER_TOKEN are required") }

async function api(method, path, token, body){
  const resp = await fetch(BASE + path, {
    method,
    headers: {"authorization": `Bearer ${token}`, "content-type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await resp.text()
  return {status: resp.status, json: text ? JSON.parse(text) : null}
}

test("a phoenix.js client on community:feed receives every feed event with the REST payloads", async t => {
  // The iOS app's mount: /community/websocket?token=...
  const socket = new Socket(BASE.replace(/^http/, "ws") + "/community", {transport: WebSocket, params: {token: MEMBER}, timeout: 3000})
  t.after(() => disconnect(socket))
  await openSocket(socket)
  const feed = socket.channel("community:feed")
  assert.deepStrictEqual(joined(await joinOk(feed)), {})

  const created = nextEvent(feed, "new_post")
  const post = await api("POST", "/api/community/posts", OTHER, {body: "from REST"})
  assert.equal(post.status, 201)
  assert.deepStrictEqual(recorded(await created), post.json)

  const updated = nextEvent(feed, "post_updated")
  const edit = await api("PATCH", `/api/community/posts/${post.json.id}`, OTHER, {body: "edited"})
  assert.equal(edit.status, 200)
  assert.deepStrictEqual(recorded(await updated), edit.json)

  const liked = nextEvent(feed, "post_likes_updated")
  const like = await api("POST", `/api/community/posts/${post.json.id}/like`, MEMBER)
  assert.deepStrictEqual(recorded(await liked), like.json)
  assert.equal(like.json.likes_count, 1)

  const commented = nextEvent(feed, "post_comments_updated")
  const comment = await api("POST", `/api/community/posts/${post.json.id}/comments`, MEMBER, {body: "hi"})
  assert.equal(comment.status, 201)
  assert.deepStrictEqual(recorded(await commented), {id: post.json.id, comments_count: 1})

  const uncommented = nextEvent(feed, "post_comments_updated")
  assert.equal((await api("DELETE", `/api/community/comments/${comment.json.id}`, MEMBER)).status, 204)
  assert.deepStrictEqual(recorded(await uncommented), {id: post.json.id, comments_count: 0})

  const deleted = nextEvent(feed, "post_deleted")
  assert.equal((await api("DELETE", `/api/community/posts/${post.json.id}`, OTHER)).status, 204)
  assert.deepStrictEqual(recorded(await deleted), {id: post.json.id})
})

test("an anonymous phoenix.js socket cannot join community:feed", async t => {
  const socket = new Socket(BASE.replace(/^http/, "ws") + "/socket", {transport: WebSocket, timeout: 3000, rejoinAfterMs: () => 60000})
  t.after(() => disconnect(socket))
  await openSocket(socket)
  const feed = socket.channel("community:feed")
  const reply = await new Promise(resolve => feed.join().receive("error", resolve).receive("ok", () => resolve("joined")))
  assert.deepStrictEqual(reply, {reason: "unauthorized"})
  feed.leave()
})

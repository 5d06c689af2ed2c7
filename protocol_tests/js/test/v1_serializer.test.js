// The V1 JSON serializer (vsn=1.0.0). phoenix.js ships only the V2 serializer, so the
// V1 object encoding is passed in as encode/decode.

import {test} from "node:test"
import assert from "node:assert/strict"
import {connectSocket, joinOk, pushOk, nextEvent, uniqueId, IS_WEBSOCKET} from "./helpers.js"

const v1 = {
  vsn: "1.0.0",
  encode: ({topic, event, payload, ref, join_ref}, callback) =>
    callback(JSON.stringify({topic, event, payload, ref, join_ref})),
  // V1 server messages have no join_ref, which phoenix.js treats as "current join"
  decode: (raw, callback) => callback(JSON.parse(raw))
}

// Only over WebSocket: with the LongPoll transport phoenix.js ignores custom encode/decode
// and always speaks V2 arrays (socket.js constructor), so vsn=1.0.0 cannot work there.
if(IS_WEBSOCKET){
  test("V1 serializer: join, ping echo and new_post broadcast", async t => {
    const socket = await connectSocket(t, v1)
    const channel = socket.channel("community:feed")
    assert.deepStrictEqual(await joinOk(channel), {})

    const payload = {x: 1, s: "v1"}
    assert.deepStrictEqual(await pushOk(channel, "ping", payload), payload)

    const post = {body: "v1", id: uniqueId()}
    const seen = nextEvent(channel, "new_post", {match: p => p && p.id === post.id})
    assert.deepStrictEqual(await pushOk(channel, "new_post", post), {})
    assert.deepStrictEqual(await seen, post)
  })
}

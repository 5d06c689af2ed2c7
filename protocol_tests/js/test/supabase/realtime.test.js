// Supabase's own clients, unmodified, against `fawkes serve --supabase-jwt-secret`: supabase-js
// (realtime-js 2.119, V2 with binary broadcasts) and realtime-js 2.90.1 (V1 JSON). Run by
// tests/supabase.rs, which starts the server with --realtime-rules (room-{sub}: the user's own
// room; staff-*: staff read, service_role writes), --realtime-max-payload-bytes 4096 and
// --realtime-events-per-second 50, and gives FAWKES_SUPABASE_URL.

import {test} from "node:test"
import assert from "node:assert/strict"
import {isDeepStrictEqual} from "node:util"
import {
  ANON, SERVICE, QUIET_MS, broadcasts, jwt, signedIn, now, presenceOf, rawSocket, realtimeV1, refused,
  refusedUpgrade, sleep, subscribed, supabase, supabaseV1, uniqueName, until, userToken
} from "./support.js"

const URL = process.env.FAWKES_SUPABASE_URL
if(!URL){ throw new Error("FAWKES_SUPABASE_URL is required") }

test("self false: the others get a broadcast, the sender does not; ack true answers ok", async t => {
  const name = uniqueName()
  const a = supabase(t, URL).channel(name, {config: {broadcast: {self: false, ack: true}}})
  const b = supabase(t, URL).channel(name)
  const seenA = broadcasts(a), seenB = broadcasts(b)
  await subscribed(a); await subscribed(b)
  // With ack, send() resolves "ok" only on the server's reply ("timed out" without one).
  assert.equal(await a.send({type: "broadcast", event: "cursor", payload: {x: 1, y: 2}}), "ok")
  await until(() => seenB.length === 1, "b's broadcast")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(seenB, [{type: "broadcast", event: "cursor", payload: {x: 1, y: 2}}])
  assert.deepStrictEqual(seenA, [])
})

test("self true: the sender gets its own broadcast too; listeners filter by event", async t => {
  const name = uniqueName()
  const a = supabase(t, URL).channel(name, {config: {broadcast: {self: true}}})
  const b = supabase(t, URL).channel(name)
  const seenA = broadcasts(a, "cursor"), seenB = broadcasts(b, "cursor"), otherB = broadcasts(b, "chat")
  await subscribed(a); await subscribed(b)
  assert.equal(await a.send({type: "broadcast", event: "cursor", payload: {n: 1}}), "ok")
  assert.equal(await a.send({type: "broadcast", event: "chat", payload: {text: "hi"}}), "ok")
  await until(() => seenA.length === 1 && seenB.length === 1 && otherB.length === 1, "both clients")
  assert.deepStrictEqual(seenA, [{type: "broadcast", event: "cursor", payload: {n: 1}}])
  assert.deepStrictEqual(seenB, seenA)
  assert.deepStrictEqual(otherB, [{type: "broadcast", event: "chat", payload: {text: "hi"}}])
})

test("binary payloads reach V2 clients byte for byte; a V1 client gets only the JSON ones", async t => {
  const name = uniqueName()
  const a = supabase(t, URL).channel(name)
  const b = supabase(t, URL).channel(name)
  const old = realtimeV1(t, URL).channel(name)
  const seenB = broadcasts(b), seenOld = broadcasts(old)
  await subscribed(a); await subscribed(b); await subscribed(old)
  const bytes = new Uint8Array([0, 1, 2, 127, 128, 255]).buffer
  assert.equal(await a.send({type: "broadcast", event: "blob", payload: bytes}), "ok")
  assert.equal(await a.send({type: "broadcast", event: "text", payload: {after: "blob"}}), "ok")
  await until(() => seenB.length === 2 && seenOld.length === 1, "the broadcasts")
  assert.equal(seenB[0].event, "blob")
  assert.ok(seenB[0].payload instanceof ArrayBuffer, "an ArrayBuffer")
  assert.deepStrictEqual(Array.from(new Uint8Array(seenB[0].payload)), [0, 1, 2, 127, 128, 255])
  assert.deepStrictEqual(seenB[1], {type: "broadcast", event: "text", payload: {after: "blob"}})
  assert.deepStrictEqual(seenOld, [{type: "broadcast", event: "text", payload: {after: "blob"}}])
})

test("realtime-js and supabase-js 2.90.1 (V1) and supabase-js 2.119 (V2) broadcast to each other", async t => {
  const name = uniqueName()
  const oldClient = realtimeV1(t, URL)
  assert.match(oldClient.endpointURL(), /vsn=1\.0\.0/)
  const old = oldClient.channel(name, {config: {broadcast: {ack: true}}})
  const oldSupabase = supabaseV1(t, URL)
  assert.match(oldSupabase.realtime.endpointURL(), /vsn=1\.0\.0/)
  const oldJs = oldSupabase.channel(name)
  const now2 = supabase(t, URL).channel(name)
  const seenOld = broadcasts(old), seenOldJs = broadcasts(oldJs), seenNew = broadcasts(now2)
  await subscribed(old); await subscribed(oldJs); await subscribed(now2)
  assert.equal(await old.send({type: "broadcast", event: "from-v1", payload: {v: 1}}), "ok")
  assert.equal(await now2.send({type: "broadcast", event: "from-v2", payload: {v: 2, s: "é"}}), "ok")
  await until(() => seenOld.length === 1 && seenNew.length === 1 && seenOldJs.length === 2, "both ways")
  assert.deepStrictEqual(seenNew, [{type: "broadcast", event: "from-v1", payload: {v: 1}}])
  assert.deepStrictEqual(seenOld, [{type: "broadcast", event: "from-v2", payload: {v: 2, s: "é"}}])
  assert.deepStrictEqual(seenOldJs, [
    {type: "broadcast", event: "from-v1", payload: {v: 1}},
    {type: "broadcast", event: "from-v2", payload: {v: 2, s: "é"}}
  ])
})

test("send() before joining goes over REST; httpSend posts JSON and bytes", async t => {
  const name = uniqueName()
  const listener = supabase(t, URL).channel(name)
  const seen = broadcasts(listener)
  await subscribed(listener)
  const sender = supabase(t, URL).channel(name)
  // Not subscribed: realtime-js falls back to POST /realtime/v1/api/broadcast.
  assert.equal(await sender.send({type: "broadcast", event: "rest", payload: {via: "rest"}}), "ok")
  assert.deepStrictEqual(await sender.httpSend("single", {via: "httpSend"}), {success: true})
  assert.deepStrictEqual(await sender.httpSend("bytes", new Uint8Array([9, 8, 7]).buffer), {success: true})
  await until(() => seen.length === 3, "three broadcasts")
  assert.deepStrictEqual(seen.slice(0, 2), [
    {type: "broadcast", event: "rest", payload: {via: "rest"}},
    {type: "broadcast", event: "single", payload: {via: "httpSend"}}
  ])
  assert.equal(seen[2].event, "bytes")
  assert.deepStrictEqual(Array.from(new Uint8Array(seen[2].payload)), [9, 8, 7])
})

test("REST: a bad key is 401, bad messages 422 naming the field, too many 429", async t => {
  const post = (body, headers) => fetch(`${URL}/realtime/v1/api/broadcast`, {
    method: "POST", headers: {"content-type": "application/json", ...headers}, body: JSON.stringify(body)
  }).then(async r => [r.status, await r.text()])
  const one = {messages: [{topic: "x", event: "e", payload: {}}]}
  assert.deepStrictEqual(await post(one, {}), [401, '{"message":"Unauthorized"}'])
  assert.deepStrictEqual(await post(one, {apikey: jwt({role: "anon", exp: now() + 60}, "another secret")}),
    [401, '{"message":"Unauthorized"}'])
  assert.deepStrictEqual(await post(one, {apikey: ANON}), [202, ""])
  const [status, body] = await post({messages: [{topic: "x", event: "e", payload: {}}, {topic: "", payload: 3}]}, {apikey: ANON})
  assert.equal(status, 422)
  assert.deepStrictEqual(JSON.parse(body), {errors: {messages: [{}, {
    topic: ["can't be blank"], event: ["can't be blank"], payload: ["is invalid"]
  }]}})
  const big = {messages: [{topic: "x", event: "e", payload: {s: "z".repeat(5000)}}]}
  assert.deepStrictEqual(await post(big, {apikey: ANON}),
    [422, '{"errors":{"messages":[{"payload":["Payload size exceeds tenant limit"]}]}}'])
  const many = {messages: Array.from({length: 101}, () => one.messages[0])}
  const [s429, b429] = await post(many, {apikey: ANON})
  assert.equal(s429, 429)
  assert.match(b429, /Too many messages to broadcast, please reduce the batch size \(at most 100\)/)
})

test("presence: three clients (one on V1) track, update and untrack, and all see one list", async t => {
  const name = uniqueName()
  const channels = [
    supabase(t, URL).channel(name, {config: {presence: {key: "ann"}}}),
    supabase(t, URL).channel(name, {config: {presence: {key: "ben"}}}),
    supabaseV1(t, URL).channel(name, {config: {presence: {key: "cy"}}})
  ]
  const joins = channels.map(() => [])
  const leaves = channels.map(() => [])
  channels.forEach((c, i) => {
    c.on("presence", {event: "join"}, e => joins[i].push(e.key))
    c.on("presence", {event: "leave"}, e => leaves[i].push(e.key))
  })
  for(const c of channels){ await subscribed(c) }
  for(const [i, c] of channels.entries()){
    assert.equal(await c.track({n: i}), "ok")
  }
  const all = {ann: [{n: 0}], ben: [{n: 1}], cy: [{n: 2}]}
  await until(() => channels.every(c => isDeepStrictEqual(presenceOf(c), all)), "three presences everywhere")
  // An update: one join and one leave of the old meta, for every client.
  assert.equal(await channels[0].track({n: 0, status: "away"}), "ok")
  const updated = {...all, ann: [{n: 0, status: "away"}]}
  await until(() => channels.every(c => isDeepStrictEqual(presenceOf(c), updated)), "the update everywhere")
  // Tracking the same payload again changes nothing.
  assert.equal(await channels[0].track({n: 0, status: "away"}), "ok")
  assert.equal(await channels[1].untrack(), "ok")
  const {ben, ...left} = updated
  await until(() => channels.every(c => isDeepStrictEqual(presenceOf(c), left)), "the untrack everywhere")
  await sleep(QUIET_MS)
  for(let i = 0; i < 3; i++){
    assert.deepStrictEqual(joins[i].filter(k => k === "ann").length, 2, `client ${i}: ann joined, then updated`)
    assert.deepStrictEqual(leaves[i].sort(), ["ann", "ben"], `client ${i}: ann's old meta, then ben`)
  }
})

test("private channels: the rules decide who reads, writes and tracks; public and private rooms stay apart", async t => {
  const alice = userToken("alice"), bob = userToken("bob")
  const own = (await signedIn(t, URL, alice)).channel("room-alice", {config: {private: true, broadcast: {ack: true}, presence: {key: "alice"}}})
  const ownToo = (await signedIn(t, URL, alice)).channel("room-alice", {config: {private: true, presence: {enabled: true}}})
  const pub = supabase(t, URL).channel("room-alice", {config: {presence: {enabled: true}}})
  const seenOwn = broadcasts(ownToo), seenPub = broadcasts(pub)
  await subscribed(own); await subscribed(ownToo); await subscribed(pub)
  assert.equal(await own.send({type: "broadcast", event: "secret", payload: {n: 1}}), "ok")
  assert.equal(await own.track({here: true}), "ok")
  await until(() => seenOwn.length === 1, "the private broadcast")
  await until(() => isDeepStrictEqual(presenceOf(ownToo), {"alice":[{"here":true}]}), "the private presence")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(seenPub, [], "the public room of the same name sees nothing")
  assert.deepStrictEqual(presenceOf(pub), {})
  const refusal = "Unauthorized: You do not have permissions to read from this Channel topic: room-alice"
  assert.equal(await refused((await signedIn(t, URL, bob)).channel("room-alice", {config: {private: true}})), refusal)
  assert.equal(await refused(supabase(t, URL).channel("room-alice", {config: {private: true}})), refusal)
  // staff-*: staff read, only the service_role key writes.
  const staff = (await signedIn(t, URL, userToken("sam", {role: "staff"}))).channel("staff-ops", {config: {private: true, broadcast: {ack: true}}})
  const service = supabase(t, URL, {key: SERVICE}).channel("staff-ops", {config: {private: true}})
  const seenStaff = broadcasts(staff), seenService = broadcasts(service)
  await subscribed(staff); await subscribed(service)
  // A write the rules refuse is dropped unanswered, as Realtime does: the ack times out.
  assert.equal(await staff.send({type: "broadcast", event: "nope", payload: {}}, {timeout: 800}), "timed out")
  assert.equal(await service.send({type: "broadcast", event: "memo", payload: {from: "service"}}), "ok")
  await until(() => seenStaff.length === 1, "the service_role broadcast")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(seenStaff, [{type: "broadcast", event: "memo", payload: {from: "service"}}])
  assert.deepStrictEqual(seenService, [], "the staff's write reached no one")
  // Staff may read but not track.
  assert.equal(await staff.track({on: true}), "error")
})

test("a token that expires while joined ends the channel with a system error and no rejoin", async t => {
  const client = (await signedIn(t, URL, userToken("eve", {ttl: 2})))
  const channel = client.channel(uniqueName())
  const system = []
  const statuses = []
  channel.on("system", {}, m => system.push(m))
  await new Promise((resolve, reject) => {
    channel.subscribe(s => { statuses.push(s); if(s === "SUBSCRIBED"){ resolve() } else if(s !== "CLOSED"){ reject(new Error(s)) } })
  })
  await until(() => statuses.includes("CLOSED"), "CLOSED", 6000)
  assert.equal(system.length, 1)
  assert.equal(system[0].extension, "system")
  assert.equal(system[0].status, "error")
  assert.match(system[0].message, /^Token has expired [0-9]+ seconds ago$/)
  await sleep(1500)
  assert.deepStrictEqual(statuses, ["SUBSCRIBED", "CLOSED"], "no rejoin")
  // A token already expired is refused at join, as Realtime words it.
  const expired = jwt({sub: "eve", role: "authenticated", exp: now() - 30})
  const message = await refused((await signedIn(t, URL, expired)).channel(uniqueName()))
  assert.match(message, /^InvalidJWTToken: Token has expired (30|31|32) seconds ago$/)
})

test("an apikey that is missing, forged or expired is refused with Realtime's 401s", async t => {
  assert.deepStrictEqual(await refusedUpgrade(URL, "vsn=2.0.0"), [401, '{"error":"API key is missing"}'])
  const forged = jwt({role: "anon", exp: now() + 60}, "not the project's secret")
  assert.deepStrictEqual(await refusedUpgrade(URL, `apikey=${forged}&vsn=2.0.0`),
    [401, '{"error":"Failed to validate JWT signature"}'])
  const expired = jwt({role: "anon", exp: now() - 5})
  assert.deepStrictEqual(await refusedUpgrade(URL, `apikey=${expired}&vsn=2.0.0`), [401, '{"error":"Token has expired"}'])
  assert.deepStrictEqual(await refusedUpgrade(URL, "apikey=garbage&vsn=2.0.0"),
    [401, '{"error":"The token provided is not a valid JWT"}'])
  assert.deepStrictEqual(await refusedUpgrade(URL, "vsn=2.0.0", {"x-api-key": forged}),
    [401, '{"error":"Failed to validate JWT signature"}'])
  // supabase-js with the forged key never gets a channel.
  const channel = supabase(t, URL, {key: forged}).channel(uniqueName())
  const statuses = []
  channel.subscribe(s => statuses.push(s))
  await sleep(1500)
  assert.ok(!statuses.includes("SUBSCRIBED"), `statuses ${statuses}`)
})

test("over the payload limit: an error with ack, nothing relayed without", async t => {
  const name = uniqueName()
  const acked = supabase(t, URL).channel(name, {config: {broadcast: {ack: true}}})
  const plain = supabase(t, URL).channel(name)
  const listener = supabase(t, URL).channel(name)
  const seen = broadcasts(listener)
  await subscribed(acked); await subscribed(plain); await subscribed(listener)
  const big = {s: "z".repeat(5000)}
  assert.equal(await acked.send({type: "broadcast", event: "big", payload: big}), "error")
  assert.equal(await plain.send({type: "broadcast", event: "big", payload: big}), "ok")
  assert.equal(await plain.send({type: "broadcast", event: "small", payload: {}}), "ok")
  await until(() => seen.length === 1, "the small one")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(seen, [{type: "broadcast", event: "small", payload: {}}])
})

test("over the events-per-second limit: a system error and the channel closes", async t => {
  const name = uniqueName()
  const flood = supabase(t, URL).channel(name)
  const listener = supabase(t, URL).channel(name)
  const seen = broadcasts(listener)
  const system = []
  const statuses = []
  flood.on("system", {}, m => system.push(m))
  await subscribed(listener)
  await new Promise(resolve => flood.subscribe(s => { statuses.push(s); if(s === "SUBSCRIBED"){ resolve() } }))
  for(let i = 0; i < 80; i++){
    flood.send({type: "broadcast", event: "n", payload: {i}})
  }
  await until(() => statuses.includes("CLOSED"), "CLOSED")
  assert.deepStrictEqual(system.map(m => [m.extension, m.status, m.message]),
    [["system", "error", "Too many messages per second"]])
  await sleep(QUIET_MS)
  // A burst of 50 passes (the budget refills a little while the burst is sent); the rest do not.
  assert.ok(seen.length >= 50 && seen.length < 60, `relayed ${seen.length}`)
  assert.deepStrictEqual(seen.slice(0, 50).map(p => p.payload.i), Array.from({length: 50}, (_, i) => i))
})

test("the wire: join reply, kind 3 in, kind 4 out to V2 and JSON to V1, exactly", async t => {
  const name = uniqueName()
  const topic = `realtime:${name}`
  const a = await rawSocket(t, URL, `apikey=${ANON}&vsn=2.0.0`)
  const b = await rawSocket(t, URL, `apikey=${ANON}&vsn=2.0.0`)
  const c = await rawSocket(t, URL, `apikey=${ANON}`)
  const config = {config: {broadcast: {self: true, ack: true}, presence: {key: "", enabled: true}, postgres_changes: [], private: false}}
  a.ws.send(JSON.stringify(["1", "1", topic, "phx_join", config]))
  assert.equal(await a.next(), `["1","1","${topic}","phx_reply",{"response":{"postgres_changes":[]},"status":"ok"}]`)
  assert.equal(await a.next(), `["1",null,"${topic}","presence_state",{}]`)
  b.ws.send(JSON.stringify(["1", "1", topic, "phx_join", {config: {broadcast: {self: false, ack: false}}}]))
  assert.equal(await b.next(), `["1","1","${topic}","phx_reply",{"response":{"postgres_changes":[]},"status":"ok"}]`)
  c.ws.send(JSON.stringify({topic, event: "phx_join", payload: {config: {}}, ref: "1", join_ref: "1"}))
  assert.equal(await c.next(), `{"event":"phx_reply","payload":{"response":{"postgres_changes":[]},"status":"ok"},"ref":"1","topic":"${topic}"}`)
  // The contract's capture, on this topic: kind 3, JSON encoding, `{"x":1,"y":2}`.
  const head = Buffer.from([3, 1, 1, Buffer.byteLength(topic), 6, 0, 1])
  a.ws.send(Buffer.concat([head, Buffer.from(`12${topic}cursor{"x":1,"y":2}`)]))
  const kind4 = Buffer.concat([Buffer.from([4, Buffer.byteLength(topic), 6, 0, 1]), Buffer.from(`${topic}cursor{"x":1,"y":2}`)])
  const fromA = [await a.next(), await a.next()]
  assert.deepStrictEqual(fromA.filter(f => typeof f === "string"), [`["1","2","${topic}","phx_reply",{"response":{},"status":"ok"}]`])
  assert.deepStrictEqual(fromA.filter(f => typeof f !== "string"), [kind4])
  assert.deepStrictEqual(await b.next(), kind4)
  assert.equal(await c.next(), `{"event":"broadcast","payload":{"event":"cursor","payload":{"x":1,"y":2},"type":"broadcast"},"ref":null,"topic":"${topic}"}`)
  // A text broadcast is relayed verbatim as text.
  b.ws.send(JSON.stringify(["1", "3", topic, "broadcast", {type: "broadcast", event: "t", payload: {k: [1, 2]}}]))
  assert.equal(await a.next(), `[null,null,"${topic}","broadcast",{"event":"t","payload":{"k":[1,2]},"type":"broadcast"}]`)
  await sleep(QUIET_MS)
  assert.deepStrictEqual(b.frames, [], "no reply without ack, nothing to the sender")
  // access_token pushes and unknown events get no reply.
  b.ws.send(JSON.stringify(["1", "4", topic, "access_token", {access_token: ANON}]))
  b.ws.send(JSON.stringify(["1", "5", topic, "whatever", {}]))
  await sleep(QUIET_MS)
  assert.deepStrictEqual(b.frames, [])
  assert.equal(b.closed(), null)
})

test("malformed kind-3 frames close only the socket that sent them", async t => {
  const name = uniqueName()
  const topic = `realtime:${name}`
  const listener = await rawSocket(t, URL, `apikey=${ANON}&vsn=2.0.0`)
  listener.ws.send(JSON.stringify(["1", "1", topic, "phx_join", {}]))
  await listener.next()
  const good = Buffer.concat([Buffer.from([3, 1, 1, Buffer.byteLength(topic), 1, 0, 1]), Buffer.from(`12${topic}e{}`)])
  const bad = [
    Buffer.from([3]),                                         // no header
    Buffer.from([3, 1, 1, 200, 1, 0, 1, 0x31, 0x32]),         // topic runs past the end
    Buffer.concat([good.subarray(0, 7), Buffer.from("12\xff")]),   // truncated, bad UTF-8
    Buffer.concat([Buffer.from([3, 1, 1, Buffer.byteLength(topic), 1, 0, 7]), Buffer.from(`12${topic}e{}`)]), // encoding 7
    Buffer.concat([Buffer.from([3, 1, 1, Buffer.byteLength(topic), 1, 0, 1]), Buffer.from(`12${topic}e{not json`)])
  ]
  for(const frame of bad){
    const s = await rawSocket(t, URL, `apikey=${ANON}&vsn=2.0.0`)
    s.ws.send(JSON.stringify(["1", "1", topic, "phx_join", {}]))
    await s.next()
    s.ws.send(frame)
    await until(() => s.closed() !== null, "the close")
    assert.equal(s.closed(), 1011, `frame ${frame.toString("hex")}`)
  }
  // The listener's socket is untouched and still relays.
  const sender = await rawSocket(t, URL, `apikey=${ANON}&vsn=2.0.0`)
  sender.ws.send(JSON.stringify(["1", "1", topic, "phx_join", {}]))
  await sender.next()
  sender.ws.send(good)
  const kind4 = Buffer.concat([Buffer.from([4, Buffer.byteLength(topic), 1, 0, 1]), Buffer.from(`${topic}e{}`)])
  assert.deepStrictEqual(await listener.next(), kind4)
  assert.equal(listener.closed(), null)
})

test("an access_token push is re-verified: a new valid token is kept silently, a bad one or lost rights close the channel", async t => {
  const topic = "realtime:room-alice"
  const join = async token => {
    const s = await rawSocket(t, URL, `apikey=${ANON}&vsn=2.0.0`)
    s.ws.send(JSON.stringify(["1", "1", topic, "phx_join", {config: {private: true}, access_token: token}]))
    assert.equal(await s.next(), `["1","1","${topic}","phx_reply",{"response":{"postgres_changes":[]},"status":"ok"}]`)
    return s
  }
  const closedWith = message => [
    `["1",null,"${topic}","system",{"channel":"room-alice","extension":"system","message":"${message}","status":"error"}]`,
    `["1","1","${topic}","phx_close",{}]`
  ]
  const kept = await join(userToken("alice"))
  kept.ws.send(JSON.stringify(["1", "2", topic, "access_token", {access_token: userToken("alice", {ttl: 7200})}]))
  await sleep(QUIET_MS)
  assert.deepStrictEqual(kept.frames, [], "no reply, still joined")
  const lost = await join(userToken("alice"))
  lost.ws.send(JSON.stringify(["1", "2", topic, "access_token", {access_token: userToken("bob")}]))
  assert.deepStrictEqual([await lost.next(), await lost.next()],
    closedWith("You no longer have permission to read from this Channel topic: room-alice"))
  const forged = await join(userToken("alice"))
  forged.ws.send(JSON.stringify(["1", "2", topic, "access_token", {access_token: jwt({sub: "alice", role: "authenticated", exp: now() + 60}, "wrong")}]))
  assert.deepStrictEqual([await forged.next(), await forged.next()], closedWith("Failed to validate JWT signature"))
  // The socket itself stays open: only the channel ended.
  assert.equal(forged.closed(), null)
})

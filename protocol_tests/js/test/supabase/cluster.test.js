// Supabase clients on two `fawkes serve` nodes sharing one redis-server: broadcasts (JSON and
// binary, V2 and V1) and presence cross between them. Run by tests/supabase.rs, which gives
// FAWKES_SUPABASE_URL_A and FAWKES_SUPABASE_URL_B.

import {test} from "node:test"
import assert from "node:assert/strict"
import {isDeepStrictEqual} from "node:util"
import {
  broadcasts, presenceOf, realtimeV1, signedIn, sleep, subscribed, supabase, uniqueName, until, userToken, QUIET_MS
} from "./support.js"

const A = process.env.FAWKES_SUPABASE_URL_A
const B = process.env.FAWKES_SUPABASE_URL_B
if(!A || !B){ throw new Error("FAWKES_SUPABASE_URL_A and FAWKES_SUPABASE_URL_B are required") }

test("broadcasts cross nodes both ways: JSON, bytes, and JSON to a V1 client", async t => {
  const name = uniqueName()
  const onA = supabase(t, A).channel(name)
  const onB = supabase(t, B).channel(name)
  const oldOnB = realtimeV1(t, B).channel(name)
  const seenA = broadcasts(onA), seenB = broadcasts(onB), seenOld = broadcasts(oldOnB)
  await subscribed(onA); await subscribed(onB); await subscribed(oldOnB)
  assert.equal(await onA.send({type: "broadcast", event: "json", payload: {from: "a"}}), "ok")
  assert.equal(await onA.send({type: "broadcast", event: "bytes", payload: new Uint8Array([1, 0, 255]).buffer}), "ok")
  assert.equal(await onB.send({type: "broadcast", event: "json", payload: {from: "b"}}), "ok")
  await until(() => seenA.length === 1 && seenB.length === 2 && seenOld.length === 2, "every broadcast")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(seenA, [{type: "broadcast", event: "json", payload: {from: "b"}}])
  assert.deepStrictEqual(seenB[0], {type: "broadcast", event: "json", payload: {from: "a"}})
  assert.equal(seenB[1].event, "bytes")
  assert.deepStrictEqual(Array.from(new Uint8Array(seenB[1].payload)), [1, 0, 255])
  // The V1 client gets A's JSON one and B's; the bytes cannot reach it.
  assert.deepStrictEqual(seenOld.map(p => p.payload.from).sort(), ["a", "b"])
})

test("REST on one node reaches the subscribers of the other", async t => {
  const name = uniqueName()
  const onB = supabase(t, B).channel(name)
  const seen = broadcasts(onB)
  await subscribed(onB)
  const viaA = supabase(t, A).channel(name)
  assert.deepStrictEqual(await viaA.httpSend("rest", {n: 1}), {success: true})
  await until(() => seen.length === 1, "the REST broadcast")
  assert.deepStrictEqual(seen, [{type: "broadcast", event: "rest", payload: {n: 1}}])
})

test("presence is one list across nodes: track, update and untrack", async t => {
  const name = uniqueName()
  const onA = supabase(t, A).channel(name, {config: {presence: {key: "on-a"}}})
  const onB = supabase(t, B).channel(name, {config: {presence: {key: "on-b"}}})
  onA.on("presence", {event: "sync"}, () => {})
  onB.on("presence", {event: "sync"}, () => {})
  await subscribed(onA); await subscribed(onB)
  assert.equal(await onA.track({node: "a"}), "ok")
  assert.equal(await onB.track({node: "b"}), "ok")
  const both = {"on-a": [{node: "a"}], "on-b": [{node: "b"}]}
  const same = want => () => [onA, onB].every(c => isDeepStrictEqual(presenceOf(c), want))
  await until(same(both), "both presences on both nodes")
  assert.equal(await onA.track({node: "a", busy: true}), "ok")
  const updated = {...both, "on-a": [{node: "a", busy: true}]}
  await until(same(updated), "the update on both nodes")
  assert.equal(await onB.untrack(), "ok")
  await until(same({"on-a": updated["on-a"]}), "the untrack on both nodes")
})

test("private rooms stay apart from public ones across nodes", async t => {
  const alice = userToken("alice")
  const privA = (await signedIn(t, A, alice)).channel("room-alice", {config: {private: true}})
  const privB = (await signedIn(t, B, alice)).channel("room-alice", {config: {private: true}})
  const pubB = supabase(t, B).channel("room-alice")
  const seenPriv = broadcasts(privB), seenPub = broadcasts(pubB)
  await subscribed(privA); await subscribed(privB); await subscribed(pubB)
  assert.equal(await privA.send({type: "broadcast", event: "secret", payload: {n: 1}}), "ok")
  await until(() => seenPriv.length === 1, "the private broadcast on B")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(seenPriv, [{type: "broadcast", event: "secret", payload: {n: 1}}])
  assert.deepStrictEqual(seenPub, [])
})

// supabase-js `postgres_changes` on the Fawkes collections (schema `public`, table = the
// collection), written through the REST API. Run by tests/supabase.rs on SQLite and on
// PostgreSQL, with FAWKES_SUPABASE_URL, FAWKES_WRITER_TOKEN (a Fawkes API token that may create
// records) and a collection `secret` whose list rule is `auth`.

import {test} from "node:test"
import assert from "node:assert/strict"
import {SERVICE, QUIET_MS, sleep, subscribed, supabase, uniqueName, until} from "./support.js"

const URL = process.env.FAWKES_SUPABASE_URL
const WRITER = process.env.FAWKES_WRITER_TOKEN
if(!URL || !WRITER){ throw new Error("FAWKES_SUPABASE_URL and FAWKES_WRITER_TOKEN are required") }

async function api(method, path, body){
  const resp = await fetch(URL + path, {
    method,
    headers: {"authorization": `Bearer ${WRITER}`, "content-type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await resp.text()
  assert.ok(resp.status < 300, `${method} ${path}: ${resp.status} ${text}`)
  return text ? JSON.parse(text) : null
}

const create = (table, fields) => api("POST", `/api/collections/${table}/records`, fields)
const update = (table, id, fields) => api("PATCH", `/api/collections/${table}/records/${id}`, fields)
const remove = (table, id) => api("DELETE", `/api/collections/${table}/records/${id}`)

/** A channel's `system` messages, in order (register before subscribing). */
function systemOf(channel){
  const seen = []
  channel.on("system", {}, m => seen.push(m))
  return seen
}

const tableName = () => uniqueName("todos").replace(/-/g, "_")

test("INSERT, UPDATE and DELETE of a collection reach `*` and typed listeners", async t => {
  const table = tableName()
  const channel = supabase(t, URL).channel(uniqueName())
  const all = [], inserts = [], updates = [], deletes = []
  channel
    .on("postgres_changes", {event: "*", schema: "public", table}, e => all.push(e))
    .on("postgres_changes", {event: "INSERT", schema: "public", table}, e => inserts.push(e))
    .on("postgres_changes", {event: "UPDATE", schema: "public", table}, e => updates.push(e))
    .on("postgres_changes", {event: "DELETE", schema: "public", table}, e => deletes.push(e))
  const system = systemOf(channel)
  await subscribed(channel)
  await until(() => system.length === 1, "the system message")
  assert.deepStrictEqual({...system[0]}, {channel: channel.subTopic, extension: "postgres_changes",
    message: "Subscribed to PostgreSQL", status: "ok"})
  const made = await create(table, {title: "tea", n: 3, done: false, tags: ["hot"]})
  const changed = await update(table, made.id, {n: 7, done: true})
  await remove(table, made.id)
  await until(() => all.length === 3 && deletes.length === 1, "three changes")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(all.map(e => [e.schema, e.table, e.eventType]),
    [["public", table, "INSERT"], ["public", table, "UPDATE"], ["public", table, "DELETE"]])
  assert.equal(inserts.length, 1); assert.equal(updates.length, 1)
  // The record as REST gave it, typed by the columns (numbers, booleans, JSON, timestamps).
  assert.deepStrictEqual(inserts[0].new, made)
  assert.deepStrictEqual(inserts[0].old, {})
  assert.deepStrictEqual(updates[0].new, changed)
  assert.deepStrictEqual(updates[0].old, {id: made.id})
  assert.deepStrictEqual(deletes[0].new, {})
  assert.deepStrictEqual(deletes[0].old, {id: made.id})
  assert.equal(inserts[0].commit_timestamp, made.updated)
  assert.equal(inserts[0].errors, null)
})

test("each filter operator picks its rows", async t => {
  const table = tableName()
  const filters = {
    eq: "n=eq.5", neq: "n=neq.5", lt: "n=lt.5", lte: "n=lte.5", gt: "n=gt.5", gte: "n=gte.5",
    in: "n=in.(1,9)", is: "flag=is.null", not: "n=not.eq.5", like: "title=like.t%", ilike: "title=ilike.T%"
  }
  const channel = supabase(t, URL).channel(uniqueName())
  const seen = Object.fromEntries(Object.keys(filters).map(k => [k, []]))
  for(const [k, filter] of Object.entries(filters)){
    channel.on("postgres_changes", {event: "INSERT", schema: "public", table, filter}, e => seen[k].push(e.new.n))
  }
  const system = systemOf(channel)
  await subscribed(channel)
  await until(() => system.length === 1, "the system message")
  assert.equal(system[0].status, "ok")
  for(const n of [1, 5, 9]){ await create(table, {n, title: n === 5 ? "tea" : "coffee", ...(n === 9 ? {flag: true} : {})}) }
  await until(() => seen.neq.length === 2, "the inserts")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(seen, {
    eq: [5], neq: [1, 9], lt: [1], lte: [1, 5], gt: [9], gte: [5, 9], in: [1, 9], is: [1, 5],
    not: [1, 9], like: [5], ilike: [5]
  })
})

test("a subscription that cannot be served is named in a system error", async t => {
  const cases = [
    [{event: "*", schema: "public", table: tableName(), filter: "n=between.1"}, /unknown filter operator "between"/],
    [{event: "*", schema: "auth", table: "users"}, /schema "auth": this server serves the Fawkes collections/],
    [{event: "*", schema: "public"}, /a table is required/],
    [{event: "*", schema: "public", table: "secret"}, /the collection "secret" is not public \(its list rule is auth\)/]
  ]
  for(const [binding, why] of cases){
    const channel = supabase(t, URL).channel(uniqueName())
    channel.on("postgres_changes", binding, () => {})
    const system = systemOf(channel)
    await subscribed(channel)
    await until(() => system.length === 1, "the system message")
    assert.equal(system[0].extension, "postgres_changes")
    assert.equal(system[0].status, "error")
    assert.match(system[0].message, why)
  }
  // The service_role key may follow a collection that does not list publicly.
  const channel = supabase(t, URL, {key: SERVICE}).channel(uniqueName())
  const seen = []
  channel.on("postgres_changes", {event: "INSERT", schema: "public", table: "secret"}, e => seen.push(e.new.v))
  const system = systemOf(channel)
  await subscribed(channel)
  await until(() => system.length === 1, "the system message")
  assert.equal(system[0].status, "ok")
  await create("secret", {v: 42})
  await until(() => seen.length === 1, "the secret insert")
  assert.deepStrictEqual(seen, [42])
})

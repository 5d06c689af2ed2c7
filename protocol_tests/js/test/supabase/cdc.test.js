// supabase-js `postgres_changes` on the app's own PostgreSQL tables, captured from a logical
// replication slot. Run by tests/cdc.rs, which starts a PostgreSQL with wal_level=logical and
// `fawkes serve --cdc-tables public.todos,public.hidden,public.mine`, and gives
// FAWKES_SUPABASE_URL and FAWKES_PG_URL. Roles anon and authenticated exist; anon may SELECT
// todos and mine (which has row-level security on), not hidden.

import {test} from "node:test"
import assert from "node:assert/strict"
import pg from "pg"
import {Socket} from "phoenix"
import {WebSocket} from "ws"
import {ANON, SERVICE, QUIET_MS, signedIn, sleep, subscribed, supabase, uniqueName, until, userToken} from "./support.js"

const URL = process.env.FAWKES_SUPABASE_URL
const PG = process.env.FAWKES_PG_URL
if(!URL || !PG){ throw new Error("FAWKES_SUPABASE_URL and FAWKES_PG_URL are required") }

async function sql(t, ...statements){
  const client = new pg.Client({connectionString: PG})
  await client.connect()
  try {
    const results = []
    for(const s of statements){ results.push(await client.query(s)) }
    return results
  } finally {
    await client.end()
  }
}

function systemOf(channel){
  const seen = []
  channel.on("system", {}, m => seen.push(m))
  return seen
}

test("INSERT, UPDATE and DELETE of an app table reach `*`, typed and filtered listeners, typed by the client", async t => {
  const channel = supabase(t, URL).channel(uniqueName())
  const all = [], inserts = [], bigUpdates = [], deletes = []
  channel
    .on("postgres_changes", {event: "*", schema: "public", table: "todos"}, e => all.push(e))
    .on("postgres_changes", {event: "INSERT", schema: "public", table: "todos"}, e => inserts.push(e))
    .on("postgres_changes", {event: "UPDATE", schema: "public", table: "todos", filter: "n=gt.5"}, e => bigUpdates.push(e))
    .on("postgres_changes", {event: "DELETE", schema: "public", table: "todos"}, e => deletes.push(e))
  const system = systemOf(channel)
  await subscribed(channel)
  await until(() => system.length === 1, "the system message")
  assert.deepStrictEqual([system[0].status, system[0].message], ["ok", "Subscribed to PostgreSQL"])
  const [inserted] = await sql(t, `INSERT INTO todos (title, n, done, meta) VALUES ('tea', 3, false, '{"a": [1, 2]}') RETURNING id`)
  const id = Number(inserted.rows[0].id)
  // Two updates in one transaction, the first filtered out (n is not over 5), then a delete.
  await sql(t, "BEGIN", `UPDATE todos SET n = 4 WHERE id = ${id}`, `UPDATE todos SET n = 7, done = true WHERE id = ${id}`, "COMMIT")
  await sql(t, `DELETE FROM todos WHERE id = ${id}`)
  await until(() => all.length === 4 && deletes.length === 1, "four changes")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(all.map(e => e.eventType), ["INSERT", "UPDATE", "UPDATE", "DELETE"])
  assert.equal(inserts.length, 1)
  const row = inserts[0].new
  // Converted by the client from the columns' types: int8 and int4 to numbers, bool, jsonb.
  assert.deepStrictEqual([row.id, row.title, row.n, row.done, row.meta], [id, "tea", 3, false, {a: [1, 2]}])
  // timestamptz comes as PostgreSQL writes it, as from Supabase (the client converts `timestamp` only).
  assert.match(row.at, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\+00$/)
  assert.match(inserts[0].commit_timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
  assert.deepStrictEqual(bigUpdates.map(e => [e.new.n, e.new.done, e.old]), [[7, true, {id}]])
  assert.deepStrictEqual(deletes[0].old, {id})
  assert.deepStrictEqual(deletes[0].new, {})
  assert.equal(deletes[0].table, "todos")
})

test("each filter operator picks its rows", async t => {
  const filters = {eq: "n=eq.5", neq: "n=neq.5", lt: "n=lt.5", gte: "n=gte.5", in: "n=in.(1,9)", is: "done=is.null", title: "title=eq.tea",
    match: "title=match.^t.a$", imatch: "title=imatch.^MI", notmatch: "title=not.match.^(tea|milk)$"}
  const channel = supabase(t, URL).channel(uniqueName())
  const seen = Object.fromEntries(Object.keys(filters).map(k => [k, []]))
  for(const [k, filter] of Object.entries(filters)){
    channel.on("postgres_changes", {event: "INSERT", schema: "public", table: "todos", filter}, e => seen[k].push(e.new.n))
  }
  const system = systemOf(channel)
  await subscribed(channel)
  await until(() => system.length === 1, "the system message")
  await sql(t, `INSERT INTO todos (title, n, done) VALUES ('coffee', 1, NULL), ('tea', 5, true), ('milk', 9, false)`)
  await until(() => seen.neq.length === 2, "the inserts")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(seen, {eq: [5], neq: [1, 9], lt: [1], gte: [5, 9], in: [1, 9], is: [1], title: [5],
    match: [5], imatch: [9], notmatch: [1]})
})

test("a table the role may not read, or a filter on a column it lacks, is refused in a system error", async t => {
  for(const [binding, why] of [
    [{event: "*", schema: "public", table: "hidden"}, /role "anon" may not SELECT from public.hidden/],
    [{event: "*", schema: "public", table: "todos", filter: "nope=eq.1"}, /the filter's column "nope" is not a column of public.todos/]
  ]){
    const channel = supabase(t, URL).channel(uniqueName())
    channel.on("postgres_changes", binding, () => {})
    const system = systemOf(channel)
    await subscribed(channel)
    await until(() => system.length === 1, "the system message")
    assert.equal(system[0].status, "error")
    assert.match(system[0].message, why)
  }
})

test("row-level security: each user gets only the rows their policies let them read; service_role all", async t => {
  const follow = async client => {
    const channel = client.channel(uniqueName())
    const seen = []
    channel.on("postgres_changes", {event: "*", schema: "public", table: "mine"}, e => seen.push(`${e.eventType} ${e.new.owner ?? e.old.id}`))
    const system = systemOf(channel)
    await subscribed(channel)
    await until(() => system.length === 1, "the system message")
    assert.equal(system[0].status, "ok", system[0].message)
    return seen
  }
  const alice = await follow(await signedIn(t, URL, userToken("alice")))
  const bob = await follow(await signedIn(t, URL, userToken("bob")))
  const anon = await follow(supabase(t, URL))
  const service = await follow(supabase(t, URL, {key: SERVICE}))
  const [rows] = await sql(t, "INSERT INTO mine (owner) VALUES ('alice'), ('bob'), ('carol') RETURNING id")
  const ids = rows.rows.map(r => Number(r.id))
  // A check reads the row as it is then (as Supabase's does): let the inserts be checked first.
  await until(() => service.length === 3 && alice.length === 1 && bob.length === 1, "the inserts")
  await sql(t, `UPDATE mine SET owner = 'bob' WHERE id = ${ids[0]}`)
  await sql(t, `DELETE FROM mine WHERE id = ${ids[2]}`)
  await until(() => service.length === 5, "the service_role follower's changes")
  await until(() => bob.length === 3, "bob's changes")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(service, ["INSERT alice", "INSERT bob", "INSERT carol", "UPDATE bob", `DELETE ${ids[2]}`])
  // Alice's row became Bob's: she no longer sees it. Deletes are not checked (the row is gone), as in Supabase.
  assert.deepStrictEqual(alice, ["INSERT alice", `DELETE ${ids[2]}`])
  assert.deepStrictEqual(bob, ["INSERT bob", "UPDATE bob", `DELETE ${ids[2]}`])
  assert.deepStrictEqual(anon, [`DELETE ${ids[2]}`], "anon has no policy: no row")
})

test("phoenix.js follows postgres:<schema>.<table>[:<filter>] with the apikey and access_token connect params", async t => {
  const open = async params => {
    const socket = new Socket(URL.replace(/^http/, "ws") + "/socket", {transport: WebSocket, params, timeout: 3000})
    t.after(() => socket.disconnect())
    socket.connect()
    return socket
  }
  const join = (socket, topic) => new Promise((resolve, reject) => {
    const channel = socket.channel(topic)
    const seen = []
    channel.on("change", data => seen.push(data))
    channel.join().receive("ok", () => resolve({channel, seen})).receive("error", e => reject(new Error(e.reason)))
      .receive("timeout", () => reject(new Error("timeout")))
  })
  const anon = await open({apikey: ANON})
  const {seen} = await join(anon, "postgres:public.todos:n=eq.42")
  await sql(t, "INSERT INTO todos (title, n) VALUES ('no', 1), ('yes', 42)")
  await until(() => seen.length === 1, "the change")
  await sleep(QUIET_MS)
  assert.equal(seen.length, 1)
  assert.deepStrictEqual([seen[0].schema, seen[0].table, seen[0].type, seen[0].record.title, seen[0].record.n], ["public", "todos", "INSERT", "yes", 42])
  assert.deepStrictEqual(seen[0].columns.find(c => c.name === "n"), {name: "n", type: "int4"})
  assert.equal(seen[0].errors, null)
  await assert.rejects(join(anon, "postgres:public.todos:nope=eq.1"), /the filter's column "nope" is not a column of public.todos/)
  await assert.rejects(join(anon, "postgres:public.todos:n=between.1"), /unknown filter operator "between"/)
  await assert.rejects(join(anon, "postgres:public.hidden"), /role "anon" may not SELECT from public.hidden/)
  await assert.rejects(join(await open({}), "postgres:public.todos"), /an apikey connect param is required/)
  // Row-level security as for supabase-js: Alice, by her access_token, gets her rows only.
  const alice = await open({apikey: ANON, access_token: userToken("alice")})
  const mine = await join(alice, "postgres:public.mine")
  await sql(t, "INSERT INTO mine (owner) VALUES ('bob'), ('alice')")
  await until(() => mine.seen.length === 1, "alice's row")
  await sleep(QUIET_MS)
  assert.deepStrictEqual(mine.seen.map(d => d.record.owner), ["alice"])
})

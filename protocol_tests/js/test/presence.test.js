// Presence on channel:*: presence_state/presence_diff as consumed by phoenix.js'
// Presence (onSync/list) on three clients.

import {test} from "node:test"
import assert from "node:assert/strict"
import {Presence} from "phoenix"
import {connectSocket, joinOk, awaitReply, waitUntil, uniqueId} from "./helpers.js"

const ISO_8601 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/

/** {user_id: metas} as the client currently sees it. */
function snapshot(presence){
  return Object.fromEntries(presence.list((id, {metas}) => [id, metas]))
}

test("three clients converge on the same presence list, and on a leave", async t => {
  const topic = `channel:room-${uniqueId()}`
  const users = ["u1", "u2", "u3"]
  const sockets = await Promise.all(users.map(() => connectSocket(t)))
  const clients = users.map((user, i) => {
    const channel = sockets[i].channel(topic, {user_id: user})
    const presence = new Presence(channel)
    const client = {user, channel, presence, syncedKeys: null}
    // the list as of the last onSync, so convergence is proven through onSync
    presence.onSync(() => { client.syncedKeys = presence.list(id => id).sort() })
    return client
  })

  const converged = keys => clients => clients.every(c => JSON.stringify(c.syncedKeys) === JSON.stringify(keys))
  const describeKeys = clients => () => clients.map(c => `${c.user}: ${JSON.stringify(c.syncedKeys)}`).join(", ")

  for(const {channel} of clients){ assert.deepStrictEqual(await joinOk(channel), {}) }
  await waitUntil(() => converged(users)(clients), describeKeys(clients))

  const reference = snapshot(clients[0].presence)
  assert.deepStrictEqual(Object.keys(reference).sort(), users)
  for(const user of users){
    const metas = reference[user]
    assert.equal(metas.length, 1, `${user} has one meta`)
    assert.deepStrictEqual(Object.keys(metas[0]).sort(), ["online_at", "phx_ref"])
    assert.equal(typeof metas[0].phx_ref, "string")
    assert.ok(metas[0].phx_ref.length > 0)
    assert.equal(typeof metas[0].online_at, "string")
    assert.match(metas[0].online_at, ISO_8601)
  }
  // every client holds the same entries (same phx_refs), whatever order it joined in
  for(const {presence} of clients.slice(1)){ assert.deepStrictEqual(snapshot(presence), reference) }

  const [stay1, stay2, leaver] = clients
  await awaitReply(leaver.channel.leave(), "ok", `leave ${topic}`)
  await waitUntil(() => converged(["u1", "u2"])([stay1, stay2]), describeKeys([stay1, stay2]))
  const {u3: _left, ...remaining} = reference
  assert.deepStrictEqual(snapshot(stay1.presence), remaining)
  assert.deepStrictEqual(snapshot(stay2.presence), remaining)
})

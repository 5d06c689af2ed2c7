// The inspector's gauges move as the server's load does, as an admin sees them: Debian's
// Chromium, headless, driven by playwright-core, against `fawkes serve --inspector-sample-ms 200`.
// Node opens phoenix.js clients that join the feed and a chat room (tracked in its presence), and
// REST writes fan out to them; the charts' latest values (each chart's accessible name and its
// `data-latest`) follow: connections and presence entries up to the clients opened and back to 0
// after they close, deliveries per second above 0 under the writes, resident memory above 0.
//
//   FAWKES_APP_URL       http://host:port of that server
//   FAWKES_ADMIN_TOKEN   an admin's API token
//   FAWKES_MEMBER_TOKEN  a community member's API token (the clients and the writes)
//   FAWKES_CLIENTS       how many clients to open (default 24)
//   CHROMIUM             the browser (default /usr/bin/chromium)

import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {existsSync} from "node:fs"
import {chromium} from "playwright-core"
import {Socket} from "phoenix"
import {WebSocket} from "ws"
import {disconnect, joinOk, openSocket, sleep} from "../helpers.js"

const BASE = process.env.FAWKES_APP_URL
const ADMIN = process.env.FAWKES_ADMIN_TOKEN
const MEMBER = process.env.FAWKES_MEMBER_TOKEN
const CLIENTS = Number(process.env.FAWKES_CLIENTS || 24)
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium"
if(!BASE || !ADMIN || !MEMBER){ throw new Error("FAWKES_APP_URL, FAWKES_ADMIN_TOKEN and FAWKES_MEMBER_TOKEN are required") }
// A missing browser fails the suite: it is never skipped.
if(!existsSync(CHROMIUM)){ throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium)`) }

const WAIT = 15000
let browser

before(async () => { browser = await chromium.launch({executablePath: CHROMIUM, args: ["--no-sandbox"]}) })
after(async () => { await browser?.close() })

async function api(method, path, body){
  const resp = await fetch(BASE + path, {
    method,
    headers: {"authorization": `Bearer ${MEMBER}`, "content-type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await resp.text()
  return {status: resp.status, json: text ? JSON.parse(text) : null}
}

/** The chart titled `title`: an image whose accessible name starts with it. */
function chart(page, title){
  return page.getByRole("img", {name: new RegExp(`^${title}: `)})
}

/** The chart's latest value, as a number (NaN before its first sample). */
async function latest(page, title){
  return Number(await chart(page, title).getAttribute("data-latest"))
}

/** Waits until the latest value of the chart titled `title` passes `ok`; fails naming what it last showed. */
async function waitLatest(page, title, ok, what){
  const until = Date.now() + WAIT
  let seen
  while(Date.now() < until){
    seen = await latest(page, title)
    if(ok(seen)){ return seen }
    await sleep(100)
  }
  assert.fail(`${title}: waited for ${what}, the chart still shows ${seen} (${await chart(page, title).getAttribute("aria-label")})`)
}

test("the gauges' charts follow connections, presence and deliveries as clients come, write and go", async () => {
  const page = await (await browser.newContext({viewport: {width: 1100, height: 900}})).newPage()
  page.on("pageerror", e => { throw new Error(`page error: ${e.message}`) })
  await page.goto(`${BASE}/admin/sign-in`)
  await page.getByLabel("Admin API token").fill(ADMIN)
  await page.getByRole("button", {name: "Sign in"}).click()
  await page.waitForURL(`${BASE}/admin`)

  const gauges = page.getByRole("region", {name: "Gauges"})
  await gauges.waitFor({state: "visible", timeout: WAIT})
  await page.locator("#gauges-meta", {hasText: "sampled every 200 ms over the last 15 min"}).waitFor({timeout: WAIT})
  const titles = ["Connections", "Deliveries per second", "Resident memory", "Queued bytes", "Presence entries", "Tasks", "Open descriptors"]
  for(const title of titles){ await chart(page, title).waitFor({timeout: WAIT}) }

  // No client yet: the admin's page polls over HTTP, it holds no socket.
  await waitLatest(page, "Connections", n => n === 0, "0")
  assert.match(await chart(page, "Connections").getAttribute("aria-label"), /^Connections: 0 \(min 0, max 0, (over the last \d+ s|one sample)\)$/)
  assert.equal(await latest(page, "Presence entries"), 0)
  const rss = await waitLatest(page, "Resident memory", n => n > 0, "a positive size")
  assert.match(await chart(page, "Resident memory").getAttribute("aria-label"), /^Resident memory: \d+\.\d MiB \(min /)
  assert.ok(rss > 1048576, `resident memory ${rss}`)
  assert.ok(await latest(page, "Open descriptors") > 3)
  assert.ok(await latest(page, "Tasks") >= 1)

  // A chat room to be present in, and the clients: each on the feed and in the room.
  const room = await api("POST", "/api/channels", {name: "gauges", private: false})
  assert.equal(room.status, 201)
  const sockets = []
  const received = {n: 0}
  try {
    for(let i = 0; i < CLIENTS; i++){
      const socket = new Socket(BASE.replace(/^http/, "ws") + "/socket", {
        transport: WebSocket, params: {token: MEMBER}, timeout: 5000, rejoinAfterMs: () => 60000
      })
      sockets.push(socket)
      await openSocket(socket)
      const feed = socket.channel("community:feed")
      feed.on("new_post", () => { received.n++ })
      await joinOk(feed)
      await joinOk(socket.channel(`channel:${room.json.id}`))
    }
    await waitLatest(page, "Connections", n => n === CLIENTS, String(CLIENTS))
    assert.match(await chart(page, "Connections").getAttribute("aria-label"), new RegExp(`^Connections: ${CLIENTS} \\(min 0, max ${CLIENTS}, over the last \\d+ (s|min)\\)$`))
    // One presence entry per client: the same user, tracked once per socket.
    await waitLatest(page, "Presence entries", n => n === CLIENTS, String(CLIENTS))

    // Once the joins' presence diffs are delivered, nothing moves: the rate falls to 0.
    await waitLatest(page, "Deliveries per second", n => n === 0, "0 while idle")
    // Then writes, each fanned out to every client, until a sample shows them.
    let posts = 0
    const writing = (async () => {
      const until = Date.now() + WAIT
      while(Date.now() < until && posts < 40){
        assert.equal((await api("POST", "/api/community/posts", {body: `post ${posts}`})).status, 201)
        posts++
        await sleep(50)
      }
    })()
    const rate = await waitLatest(page, "Deliveries per second", n => n > 0, "a positive rate under the writes")
    await writing
    assert.ok(rate > 0)
    // The writes did fan out: every client got every post.
    const expected = posts * CLIENTS
    const until = Date.now() + WAIT
    while(received.n < expected && Date.now() < until){ await sleep(50) }
    assert.equal(received.n, expected)
    await page.screenshot({path: `${process.env.FAWKES_SCREENSHOTS || "/tmp"}/gauges.png`, fullPage: true})
  } finally {
    await Promise.all(sockets.map(disconnect))
  }

  await waitLatest(page, "Connections", n => n === 0, "0 after the clients closed")
  await waitLatest(page, "Presence entries", n => n === 0, "0 after the clients closed")
  await waitLatest(page, "Deliveries per second", n => n === 0, "0 once the writes stopped")
  // The window still shows the peak.
  assert.match(await chart(page, "Connections").getAttribute("aria-label"), new RegExp(`^Connections: 0 \\(min 0, max ${CLIENTS}, `))
  // The charts' lines are drawn: as many points as the window has samples.
  const points = await chart(page, "Connections").locator("polyline").getAttribute("points")
  assert.ok(points.split(" ").length > 10, points)
})

// The inspector's change-capture section as an admin sees it: Debian's Chromium, headless,
// driven by playwright-core, against `fawkes serve --cdc-tables public.todos` on a PostgreSQL
// with wal_level = logical. Rows inserted with the `pg` client show up in its counters.
//
//   FAWKES_APP_URL       http://host:port of that server
//   FAWKES_ADMIN_TOKEN   an admin's API token
//   FAWKES_PG_URL        the database (the same one the server captures)
//   CHROMIUM             the browser (default /usr/bin/chromium)

import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {existsSync} from "node:fs"
import {chromium} from "playwright-core"
import pg from "pg"

const BASE = process.env.FAWKES_APP_URL
const ADMIN = process.env.FAWKES_ADMIN_TOKEN
const PG_URL = process.env.FAWKES_PG_URL
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium"
if(!BASE || !ADMIN || !PG_URL){ throw new Error("FAWKES_APP_URL, FAWKES_ADMIN_TOKEN and FAWKES_PG_URL are required") }
// A missing browser fails the suite: it is never skipped.
if(!existsSync(CHROMIUM)){ throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium)`) }

const WAIT = 10000
let browser

before(async () => { browser = await chromium.launch({executablePath: CHROMIUM, args: ["--no-sandbox"]}) })
after(async () => { await browser?.close() })

test("the change-capture section shows the slot this node reads, its lag and the changes it broadcast", async () => {
  const page = await (await browser.newContext()).newPage()
  await page.goto(`${BASE}/admin/sign-in`)
  await page.getByLabel("Admin API token").fill(ADMIN)
  await page.getByRole("button", {name: "Sign in"}).click()
  await page.waitForURL(`${BASE}/admin`)

  const section = page.getByRole("region", {name: "Change capture"})
  await section.waitFor({state: "visible", timeout: WAIT})
  // The only node: it takes the slot's lock within a second.
  await page.locator("#cdc-reading", {hasText: /^reads$/}).waitFor({timeout: WAIT})
  assert.match(await page.locator("#cdc-lag").textContent(), /^[\d,]+ bytes$/)
  assert.equal(await page.locator("#cdc-changes").textContent(), "0")
  assert.equal(await page.locator("#cdc-drops").textContent(), "0")

  const db = new pg.Client({connectionString: PG_URL})
  await db.connect()
  try {
    await db.query("INSERT INTO todos (title) VALUES ('a'), ('b'), ('c')")
    await db.query("UPDATE todos SET done = true WHERE title = 'a'")
  } finally {
    await db.end()
  }
  // Three inserts and an update, counted as the page polls.
  await page.locator("#cdc-changes", {hasText: /^4$/}).waitFor({timeout: WAIT})
  assert.equal(await page.locator("#cdc-drops").textContent(), "0")
})

// The demo pages and the inspector as people use them: Debian's Chromium, headless, driven by
// playwright-core. Two browser contexts side by side are two users (alice signs in with her API
// token, bob creates a demo user with one click); what one does shows up in the other without a
// reload. A third context is the admin in /admin. Screenshots go to FAWKES_SCREENSHOTS.
//
//   FAWKES_APP_URL       http://host:port of `fawkes serve --demo`
//   FAWKES_ALICE_TOKEN   a community member's API token
//   FAWKES_ADMIN_TOKEN   an admin's API token
//   FAWKES_SCREENSHOTS   where screenshots are written
//   CHROMIUM             the browser (default /usr/bin/chromium)

import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {existsSync, mkdirSync} from "node:fs"
import {chromium} from "playwright-core"

const BASE = process.env.FAWKES_APP_URL
const ALICE = process.env.FAWKES_ALICE_TOKEN
const ADMIN = process.env.FAWKES_ADMIN_TOKEN
const SHOTS = process.env.FAWKES_SCREENSHOTS
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium"
if(!BASE || !ALICE || !ADMIN || !SHOTS){
  throw new Error("FAWKES_APP_URL, FAWKES_ALICE_TOKEN, FAWKES_ADMIN_TOKEN and FAWKES_SCREENSHOTS are required")
}
// A missing browser fails the suite: it is never skipped.
if(!existsSync(CHROMIUM)){ throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium)`) }
mkdirSync(SHOTS, {recursive: true})

const WAIT = 10000
let browser, alice, bob, aliceContext, bobContext

/** Waits until `locator` (narrowed to elements containing `text`, if given) is visible. */
async function sees(locator, text){
  const target = text === undefined ? locator : locator.filter({hasText: text})
  await target.first().waitFor({state: "visible", timeout: WAIT})
}

async function connected(page){
  await page.locator("#connection.up").waitFor({timeout: WAIT})
}

before(async () => {
  browser = await chromium.launch({executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"]})
  aliceContext = await browser.newContext({viewport: {width: 1100, height: 760}})
  bobContext = await browser.newContext({viewport: {width: 1100, height: 760}})
  alice = await aliceContext.newPage()
  bob = await bobContext.newPage()
  for(const page of [alice, bob]){
    page.on("pageerror", e => { throw new Error(`page error: ${e.message}`) })
  }
})

after(async () => { if(browser){ await browser.close() } })

test("alice signs in with her token, bob creates a demo user with one click", async () => {
  await alice.goto(`${BASE}/demo/feed`)
  await alice.getByLabel("API token").fill(ALICE)
  await alice.getByRole("button", {name: "Sign in"}).click()
  await sees(alice.locator("#who"), "Signed in as alice")
  await connected(alice)

  await bob.goto(`${BASE}/demo/feed`)
  await bob.getByLabel("Your name").fill("bob")
  await bob.getByRole("button", {name: "Create demo user"}).click()
  await sees(bob.locator("#who"), "Signed in as bob")
  await connected(bob)
})

test("feed: a post, a like and a comment in one browser appear in the other without a reload", async () => {
  await alice.getByLabel("New post").fill("Fresh bread at seven")
  await alice.getByRole("button", {name: "Post", exact: true}).click()
  const atBob = bob.locator("#posts li.post", {hasText: "Fresh bread at seven"})
  await sees(atBob)
  assert.equal(await atBob.getByRole("button", {name: /Like/}).textContent(), "Like (0)")

  await atBob.getByRole("button", {name: "Like (0)"}).click()
  const atAlice = alice.locator("#posts li.post", {hasText: "Fresh bread at seven"})
  await sees(atAlice.getByRole("button", {name: "Like (1)"}))

  await atBob.getByRole("textbox", {name: "Comment", exact: true}).fill("Save me a loaf")
  await atBob.getByRole("button", {name: "Add comment"}).click()
  await sees(atAlice.locator("li.comment"), "Save me a loaf")
  await sees(atAlice.locator(".comments-count"), "1 comment")
  // Exactly one post and one comment, at both.
  assert.equal(await alice.locator("#posts li.post").count(), 1)
  assert.equal(await bob.locator("#posts li.post li.comment").count(), 1)
  await bob.screenshot({path: `${SHOTS}/feed.png`})
})

test("chat: rooms, messages, typing, presence, reactions and unread counts", async () => {
  await alice.goto(`${BASE}/demo/chat`)
  await connected(alice)
  await alice.getByLabel("Room name").fill("bakery")
  await alice.getByRole("button", {name: "Create room"}).click()
  await sees(alice.locator("#room-title"), "# bakery")

  await bob.goto(`${BASE}/demo/chat`)
  await connected(bob)
  await bob.getByRole("button", {name: "# bakery"}).click()
  await sees(bob.locator("#room-title"), "# bakery")

  // Both users in the presence list, on both pages.
  for(const page of [alice, bob]){
    await sees(page.locator("#online li"), "alice")
    await sees(page.locator("#online li"), "bob")
    assert.equal(await page.locator("#online li").count(), 2)
  }

  // Typing shows at alice while bob types, then his message arrives.
  await bob.getByRole("textbox", {name: "Message", exact: true}).fill("Do we have rye?")
  await sees(alice.getByRole("status", {name: "Typing"}), "bob is typing…")
  await bob.getByRole("button", {name: "Send"}).click()
  const message = alice.locator("#messages li", {hasText: "Do we have rye?"})
  await sees(message)
  await alice.waitForFunction(() => document.getElementById("typing").textContent === "", null, {timeout: WAIT})

  await alice.getByRole("textbox", {name: "Message", exact: true}).fill("Two loaves left")
  await alice.getByRole("button", {name: "Send"}).click()
  await sees(bob.locator("#messages li"), "Two loaves left")

  // A reaction at alice shows at bob.
  await message.getByRole("button", {name: "React 👍"}).click()
  await sees(bob.locator("#messages li", {hasText: "Do we have rye?"}).locator(".reactions"), "👍 1")
  await alice.screenshot({path: `${SHOTS}/chat.png`})

  // Unread: bob is a member of "kitchen" but looks at "bakery"; alice writes in kitchen.
  await alice.getByLabel("Room name").fill("kitchen")
  await alice.getByRole("button", {name: "Create room"}).click()
  await sees(alice.locator("#room-title"), "# kitchen")
  await sees(bob.getByRole("button", {name: "# kitchen"}))
  await bob.getByRole("button", {name: "# kitchen"}).click()
  await sees(bob.locator("#room-title"), "# kitchen")
  await bob.getByRole("button", {name: "# bakery"}).click()
  await sees(bob.locator("#room-title"), "# bakery")
  await alice.getByRole("textbox", {name: "Message", exact: true}).fill("Oven is hot")
  await alice.getByRole("button", {name: "Send"}).click()
  await sees(bob.getByLabel("1 unread in kitchen"))
})

test("orders: a card added and moved in one board moves in the other", async () => {
  await alice.goto(`${BASE}/demo/orders`)
  await bob.goto(`${BASE}/demo/orders`)
  await connected(alice)
  await connected(bob)
  await alice.getByLabel("Item").fill("Flat white")
  await alice.getByLabel("Customer").fill("Ann")
  await alice.getByRole("button", {name: "Add order"}).click()

  const newAtBob = bob.getByRole("list", {name: "New orders"}).getByRole("listitem", {name: "Order Flat white for Ann"})
  await sees(newAtBob)
  await newAtBob.getByRole("button", {name: "Move to Preparing"}).click()
  const preparingAtAlice = alice.getByRole("list", {name: "Preparing orders"}).getByRole("listitem", {name: "Order Flat white for Ann"})
  await sees(preparingAtAlice)
  assert.equal(await alice.getByRole("list", {name: "New orders"}).getByRole("listitem").count(), 0)

  await preparingAtAlice.getByRole("button", {name: "Move to Ready"}).click()
  await sees(bob.getByRole("list", {name: "Ready orders"}).getByRole("listitem", {name: "Order Flat white for Ann"}))
  assert.equal(await bob.getByRole("list", {name: "Preparing orders"}).getByRole("listitem").count(), 0)
  await alice.getByLabel("Item").fill("Croissant")
  await alice.getByLabel("Customer").fill("Ben")
  await alice.getByRole("button", {name: "Add order"}).click()
  await sees(bob.getByRole("listitem", {name: "Order Croissant for Ben"}))
  await bob.screenshot({path: `${SHOTS}/orders.png`})
})

test("the inspector is for admins, lists both connections, and its disconnect makes one page reconnect by itself", async () => {
  const adminContext = await browser.newContext({viewport: {width: 1100, height: 900}})
  const admin = await adminContext.newPage()
  try {
    // Anonymous: sent to sign in. A member's token is refused.
    await admin.goto(`${BASE}/admin`)
    assert.equal(new URL(admin.url()).pathname, "/admin/sign-in")
    await admin.getByLabel("Admin API token").fill(ALICE)
    const [refused] = await Promise.all([
      admin.waitForResponse(r => r.url().endsWith("/admin/session")),
      admin.getByRole("button", {name: "Sign in"}).click()
    ])
    assert.equal(refused.status(), 403)
    await sees(admin.getByRole("alert"), "That user is not an admin.")

    await admin.getByLabel("Admin API token").fill(ADMIN)
    await admin.getByRole("button", {name: "Sign in"}).click()
    await admin.waitForURL(`${BASE}/admin`)
    const cookies = await adminContext.cookies()
    const session = cookies.find(c => c.name === "fawkes_admin")
    assert.ok(session, "a session cookie")
    assert.equal(session.httpOnly, true)
    assert.equal(session.sameSite, "Strict")

    // Alice's and bob's boards are the only connections: two rows, each with its socket id.
    const rows = admin.getByRole("table", {name: "Connections"}).locator("tbody tr")
    await admin.waitForFunction(() => document.querySelectorAll("#connections tr").length === 2, null, {timeout: WAIT})
    assert.equal(await rows.count(), 2)
    for(let i = 0; i < 2; i++){
      assert.match(await rows.nth(i).locator("td").nth(3).textContent(), /^api_token:\d+$/)
    }
    await sees(admin.getByRole("table", {name: "Topics"}).locator("tr", {hasText: "collection:orders"}).locator("td").nth(1), "2")

    // Watching collection:orders shows a change made at alice.
    await admin.getByRole("button", {name: "Watch collection:orders"}).click()
    await alice.getByLabel("Item").fill("Tea")
    await alice.getByLabel("Customer").fill("Cy")
    await alice.getByRole("button", {name: "Add order"}).click()
    await sees(admin.locator("#frames"), '"item":"Tea"')
    await admin.screenshot({path: `${SHOTS}/inspector.png`, fullPage: true})

    // Disconnect the first socket id: exactly one page reconnects by itself.
    const opens = async page => Number(await page.locator("#connection").getAttribute("data-opens"))
    assert.deepEqual([await opens(alice), await opens(bob)], [1, 1])
    await rows.first().getByRole("button", {name: /^Disconnect api_token:/}).click()
    const deadline = Date.now() + WAIT
    while(Date.now() < deadline && (await opens(alice)) + (await opens(bob)) < 3){ await new Promise(r => setTimeout(r, 100)) }
    // Then a moment more, to see that the other page was left alone.
    await new Promise(r => setTimeout(r, 1000))
    assert.deepEqual([await opens(alice), await opens(bob)].sort(), [1, 2])
    for(const page of [alice, bob]){ await connected(page) }
    // The reconnected board rejoined and still works both ways.
    await bob.getByLabel("Item").fill("Scone")
    await bob.getByLabel("Customer").fill("Di")
    await bob.getByRole("button", {name: "Add order"}).click()
    await sees(alice.getByRole("listitem", {name: "Order Scone for Di"}))
    await admin.waitForFunction(() => document.querySelectorAll("#connections tr").length === 2, null, {timeout: WAIT})
  } finally {
    await adminContext.close()
  }
})

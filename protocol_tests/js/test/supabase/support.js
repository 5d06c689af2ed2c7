// What the Supabase suites share: clients of the real npm packages pointed at a `fawkes serve`,
// keys and tokens signed with the project's secret, and waits that fail with a clear message.
//
//   FAWKES_SUPABASE_SECRET  the secret `fawkes serve --supabase-jwt-secret` was given
//   FAWKES_ANON_KEY, FAWKES_SERVICE_KEY  printed by `fawkes supabase keys`

import {createHmac, randomBytes} from "node:crypto"
import {WebSocket} from "ws"
import {createClient} from "@supabase/supabase-js"
import {RealtimeClient as RealtimeClientV1} from "realtime-js-v1"
import {createClient as createClientV1} from "supabase-js-v1"

export const SECRET = process.env.FAWKES_SUPABASE_SECRET
export const ANON = process.env.FAWKES_ANON_KEY
export const SERVICE = process.env.FAWKES_SERVICE_KEY
if(!SECRET || !ANON || !SERVICE){
  throw new Error("FAWKES_SUPABASE_SECRET, FAWKES_ANON_KEY and FAWKES_SERVICE_KEY are required")
}

export const QUIET_MS = 400

export function uniqueName(prefix = "room"){ return `${prefix}-${randomBytes(5).toString("hex")}` }
export function sleep(ms){ return new Promise(resolve => setTimeout(resolve, ms)) }
export const now = () => Math.floor(Date.now() / 1000)

const b64url = s => Buffer.from(s).toString("base64url")

/** An HS256 JWT, as Supabase Auth signs one. */
export function jwt(claims, secret = SECRET){
  const head = b64url(JSON.stringify({alg: "HS256", typ: "JWT"}))
  const body = b64url(JSON.stringify(claims))
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url")
  return `${head}.${body}.${sig}`
}

/** A signed-in user's access token. */
export function userToken(sub, {role = "authenticated", ttl = 3600} = {}){
  return jwt({sub, role, aud: "authenticated", iss: "supabase", exp: now() + ttl})
}

/**
 * supabase-js's `createClient(url, key)`, as an app calls it (Node 20 has no global WebSocket,
 * so realtime is given `ws`); `accessToken` is the signed-in user's token, as a third-party
 * auth app passes it. Its channels are removed when test `t` ends.
 */
export function supabase(t, url, {key = ANON, accessToken} = {}){
  const options = {realtime: {transport: WebSocket}, auth: {persistSession: false, autoRefreshToken: false}}
  if(accessToken){ options.accessToken = async () => accessToken }
  const client = createClient(url, key, options)
  t.after(() => client.removeAllChannels())
  return client
}

/**
 * A client signed in with a user's token, as Supabase's docs have apps do before private
 * channels: `await supabase.realtime.setAuth()`, so that the join carries the token.
 */
export async function signedIn(t, url, accessToken){
  const client = supabase(t, url, {accessToken})
  await client.realtime.setAuth()
  return client
}

/** supabase-js 2.90.1, whose realtime-js still speaks V1 JSON by default. */
export function supabaseV1(t, url, {key = ANON} = {}){
  const client = createClientV1(url, key, {realtime: {transport: WebSocket}, auth: {persistSession: false, autoRefreshToken: false}})
  t.after(() => client.removeAllChannels())
  return client
}

/** realtime-js 2.90.1, the last release that speaks V1 JSON by default. */
export function realtimeV1(t, url, {key = ANON} = {}){
  const client = new RealtimeClientV1(url.replace(/^http/, "ws") + "/realtime/v1", {
    params: {apikey: key}, transport: WebSocket
  })
  t.after(() => client.disconnect())
  return client
}

/** Subscribes; resolves on SUBSCRIBED, rejects with the client's status and message otherwise. */
export function subscribed(channel, ms = 5000){
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not SUBSCRIBED within ${ms} ms`)), ms)
    channel.subscribe((status, err) => {
      if(status === "SUBSCRIBED"){ clearTimeout(timer); resolve() }
      else if(status !== "CLOSED"){ clearTimeout(timer); reject(new Error(`${status}: ${err && err.message}`)) }
    })
  })
}

/** Subscribes, expecting a refusal: the CHANNEL_ERROR message. */
export function refused(channel, ms = 5000){
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no CHANNEL_ERROR within ${ms} ms`)), ms)
    channel.subscribe((status, err) => {
      if(status === "SUBSCRIBED"){ clearTimeout(timer); reject(new Error("SUBSCRIBED, expected a refusal")) }
      else if(status === "CHANNEL_ERROR"){ clearTimeout(timer); resolve(err && err.message) }
    })
  })
}

/** Every broadcast `event` on `channel`, in arrival order (register before subscribing). */
export function broadcasts(channel, event = "*"){
  const seen = []
  channel.on("broadcast", {event}, payload => seen.push(payload))
  return seen
}

/** Waits until `cond()` is true. */
export async function until(cond, what, ms = 5000){
  const deadline = Date.now() + ms
  while(!cond()){
    if(Date.now() > deadline){ throw new Error(`timed out waiting for ${what}`) }
    await sleep(20)
  }
}

/** A presence list as keys to payloads, without the server's refs. */
export function presenceOf(channel){
  const state = channel.presenceState()
  const out = {}
  for(const [key, metas] of Object.entries(state)){
    out[key] = metas.map(({presence_ref, ...rest}) => rest)
  }
  return out
}

/** A raw WebSocket, for exact frames: resolves when open, with a queue of what arrives. */
export function rawSocket(t, url, query){
  const ws = new WebSocket(url.replace(/^http/, "ws") + "/realtime/v1/websocket?" + query)
  ws.binaryType = "nodebuffer"
  const frames = []
  let closed = null
  ws.on("message", (data, isBinary) => frames.push(isBinary ? Buffer.from(data) : data.toString()))
  ws.on("close", code => { closed = code })
  t.after(() => ws.terminate())
  const next = async (ms = 3000) => {
    await until(() => frames.length > 0, "a frame", ms)
    return frames.shift()
  }
  return new Promise((resolve, reject) => {
    ws.on("open", () => resolve({ws, frames, next, closed: () => closed}))
    ws.on("error", reject)
  })
}

/** The HTTP answer to a WebSocket upgrade that is refused: [status, body]. */
export function refusedUpgrade(url, query, headers = {}){
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, "ws") + "/realtime/v1/websocket?" + query, {headers})
    ws.on("open", () => { ws.terminate(); reject(new Error("the upgrade was accepted")) })
    ws.on("unexpected-response", (req, res) => {
      let body = ""
      res.on("data", c => { body += c })
      res.on("end", () => resolve([res.statusCode, body]))
    })
    ws.on("error", () => {})
  })
}

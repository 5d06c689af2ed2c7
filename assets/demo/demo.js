// What the three demo pages share: sign-in (an API token, or a one-click demo user), REST calls
// with the token, a phoenix.js socket with a visible connection state, and a tiny DOM helper.
import {Socket, Presence} from "/assets/phoenix.mjs"

export {Presence}

const KEY = "fawkes.demo.token"

/** Builds an element: el("button", {type: "submit", onclick: f}, "Send"). */
export function el(tag, attrs = {}, ...children){
  const node = document.createElement(tag)
  for(const [k, v] of Object.entries(attrs)){
    if(k.startsWith("on")){ node.addEventListener(k.slice(2), v) }
    else if(k === "text"){ node.textContent = v }
    else if(v === true){ node.setAttribute(k, "") }
    else if(v !== false && v != null){ node.setAttribute(k, v) }
  }
  for(const c of children){ node.append(c) }
  return node
}

/** A REST call with the signed-in token; resolves to {status, json}. */
export async function api(method, path, body){
  const headers = {"content-type": "application/json"}
  const token = localStorage.getItem(KEY)
  if(token){ headers.authorization = `Bearer ${token}` }
  const resp = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)})
  const text = await resp.text()
  let json = null
  try { json = text ? JSON.parse(text) : null } catch { json = {errors: {detail: text}} }
  return {status: resp.status, json}
}

/** A readable message from an error body. */
export function errorText(json){
  const errors = json && json.errors
  if(!errors){ return "request failed" }
  if(errors.detail){ return errors.detail }
  return Object.entries(errors).map(([k, v]) => `${k} ${[].concat(v).join(", ")}`).join("; ")
}

/**
 * Signs the page in, then calls `start(me, socket)`. Shows the sign-in forms until a token
 * works; `/api/me` checks it.
 */
export async function signIn(start){
  const box = document.getElementById("signin")
  const app = document.getElementById("app")
  const who = document.getElementById("who")
  const token = localStorage.getItem(KEY)
  if(token){
    const me = await api("GET", "/api/me")
    if(me.status === 200){
      box.hidden = true
      app.hidden = false
      who.replaceChildren(
        el("span", {text: `Signed in as ${me.json.name}`}),
        el("button", {type: "button", onclick: () => { localStorage.removeItem(KEY); location.reload() }}, "Sign out")
      )
      return start(me.json, connect(token))
    }
    localStorage.removeItem(KEY)
  }
  app.hidden = true
  box.hidden = false
  const problem = el("p", {class: "error", role: "alert"})
  const tokenInput = el("input", {name: "token", type: "password", autocomplete: "off", required: true})
  const tokenForm = el("form", {"aria-label": "Sign in with a token", onsubmit: async e => {
    e.preventDefault()
    localStorage.setItem(KEY, tokenInput.value.trim())
    const me = await api("GET", "/api/me")
    if(me.status === 200){ location.reload() } else { localStorage.removeItem(KEY); problem.textContent = "That token was not accepted." }
  }}, el("label", {}, "API token", tokenInput), el("button", {type: "submit"}, "Sign in"))
  box.replaceChildren(el("h2", {text: "Sign in"}), tokenForm, problem)
  const cfg = await api("GET", "/demo/config")
  if(cfg.json && cfg.json.signup){
    const nameInput = el("input", {name: "name", autocomplete: "off", required: true, maxlength: "32"})
    box.insertBefore(el("form", {"aria-label": "Create a demo user", onsubmit: async e => {
      e.preventDefault()
      const made = await api("POST", "/demo/users", {name: nameInput.value.trim()})
      if(made.status === 201){ localStorage.setItem(KEY, made.json.token); location.reload() } else { problem.textContent = errorText(made.json) }
    }}, el("label", {}, "Your name", nameInput), el("button", {type: "submit"}, "Create demo user")), problem)
  }
}

/** A connected phoenix.js socket whose state (and how many times it connected) is shown. */
function connect(token){
  const badge = document.getElementById("connection")
  let opens = 0
  const socket = new Socket("/socket", {authToken: token, reconnectAfterMs: tries => [200, 500, 1000, 2000][tries - 1] || 3000})
  socket.onOpen(() => {
    opens += 1
    badge.className = "up"
    badge.textContent = opens === 1 ? "Connected" : `Connected (reconnected ${opens - 1}×)`
    badge.dataset.opens = String(opens)
  })
  socket.onClose(() => { badge.className = "down"; badge.textContent = "Disconnected, reconnecting…" })
  socket.connect()
  return socket
}

/** A channel push as a promise of its reply payload; rejects on error or timeout. */
export function push(channel, event, payload){
  return new Promise((resolve, reject) => {
    channel.push(event, payload)
      .receive("ok", resolve)
      .receive("error", r => reject(new Error(r && r.reason || "refused")))
      .receive("timeout", () => reject(new Error("timed out")))
  })
}

/** Times as the local clock shows them. */
export function time(iso){
  const d = new Date(iso)
  return isNaN(d) ? "" : d.toLocaleTimeString()
}

// The proxied channels' page: joins a declared topic with a nick, shows `new_msg` and who is
// here, and pushes `new_msg`. Every decision is the app's backend's (examples/proxy_chat).
import {Socket, Presence} from "/assets/phoenix.mjs"

const $ = id => document.getElementById(id)
const line = text => { const li = document.createElement("li"); li.textContent = text; $("messages").append(li) }

const socket = new Socket("/socket")
socket.onOpen(() => { $("connection").textContent = "Connected" })
socket.onClose(() => { $("connection").textContent = "Disconnected" })
socket.connect()

let channel = null

$("join").addEventListener("submit", ev => {
  ev.preventDefault()
  const form = new FormData(ev.target)
  if(channel){ channel.leave() }
  $("messages").replaceChildren()
  $("here").textContent = ""
  channel = socket.channel(form.get("topic"), {nick: form.get("nick")})
  const presence = new Presence(channel)
  presence.onSync(() => { $("here").textContent = presence.list(id => id).sort().join(", ") })
  channel.on("new_msg", m => line(`${m.nick}: ${m.body}`))
  const joining = channel
  channel.join()
    .receive("ok", () => { $("status").textContent = `joined ${joining.topic}`; $("send").hidden = false })
    .receive("error", e => {
      $("status").textContent = `refused: ${(e && e.reason) || JSON.stringify(e)}`
      joining.leave()
      $("send").hidden = true
    })
})

$("send").addEventListener("submit", ev => {
  ev.preventDefault()
  const input = ev.target.elements.body
  channel.push("new_msg", {body: input.value})
    .receive("error", e => line(`not sent: ${(e && e.reason) || JSON.stringify(e)}`))
  input.value = ""
})

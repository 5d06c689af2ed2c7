// Chat: rooms over REST; one `channel:<id>` joined at a time for messages, typing, presence and
// reactions; `user:<me>` for unread counts across rooms.
import {Presence, api, el, errorText, push, signIn, time} from "/assets/demo.js"

const EMOJI = "👍"

signIn(async (me, socket) => {
  const problem = document.getElementById("chat-error")
  const roomList = document.getElementById("rooms")
  const messages = document.getElementById("messages")
  const typingLine = document.getElementById("typing")
  const online = document.getElementById("online")
  const names = new Map([[me.id, me.name]])
  const unread = new Map()
  const typing = new Set()
  let rooms = []
  let current = null // {id, name, channel, presence}

  const say = e => { problem.textContent = e.message || String(e) }

  const drawRooms = () => {
    roomList.replaceChildren(...rooms.map(r => {
      const n = unread.get(r.id) || 0
      return el("li", {"data-id": String(r.id)},
        el("button", {type: "button", "aria-current": current && current.id === r.id ? "true" : "false", onclick: () => open(r)}, `# ${r.name}`),
        n > 0 ? el("span", {class: "unread", "aria-label": `${n} unread in ${r.name}`, text: String(n)}) : "")
    }))
  }

  const loadRooms = async () => {
    const r = await api("GET", "/api/channels")
    if(r.status !== 200){ problem.textContent = errorText(r.json); return }
    rooms = r.json.items
    for(const room of rooms){ if(!unread.has(room.id)){ unread.set(room.id, room.unread_count || 0) } }
    drawRooms()
  }

  const drawTyping = () => {
    const who = [...typing].filter(id => id !== me.id).map(id => names.get(id) || `user ${id}`)
    typingLine.textContent = who.length === 0 ? "" : `${who.join(", ")} ${who.length === 1 ? "is" : "are"} typing…`
  }

  let fetchingNames = false
  const drawOnline = () => {
    if(!current){ online.replaceChildren(); return }
    // Someone new is here: learn their name from the room's members, then draw again.
    const unknown = current.presence.list(id => id).some(id => !names.has(Number(id)))
    if(unknown && !fetchingNames){
      fetchingNames = true
      api("GET", `/api/channels/${current.id}/members`).then(r => {
        if(r.status === 200){ r.json.items.forEach(u => names.set(u.user_id, u.name)) }
        fetchingNames = false
        drawOnline()
      })
    }
    online.replaceChildren(...current.presence.list((id, {metas}) =>
      el("li", {"data-user": id}, names.get(Number(id)) || `user ${id}`, metas.some(m => m.status !== "online") ? ` (${metas[0].status})` : "")))
  }

  const messageNode = m => {
    const counts = (m.reactions || []).map(r => `${r.emoji} ${r.count}`).join(" ")
    return el("li", {class: "card message", "data-id": String(m.id)},
      el("b", {text: m.author_name}), ` ${m.body} `,
      el("span", {class: "meta", text: time(m.inserted_at)}), " ",
      el("span", {class: "reactions", "aria-label": "Reactions", text: counts}), " ",
      el("button", {type: "button", onclick: () => push(current.channel, "react", {message_id: m.id, emoji: EMOJI}).catch(say)}, `React ${EMOJI}`))
  }

  const upsert = m => {
    const node = messageNode(m)
    const old = messages.querySelector(`li[data-id="${m.id}"]`)
    if(old){ old.replaceWith(node) } else { messages.append(node) }
    node.message = m
  }

  const markRead = id => { if(current && id){ push(current.channel, "mark_read", {message_id: id}).catch(() => {}) } }

  const open = async room => {
    if(current){ current.channel.leave() }
    problem.textContent = ""
    // Joining a public room makes one a member (the REST call is a no-op for members).
    const joined = await api("POST", `/api/channels/${room.id}/members`, {user_id: me.id})
    if(joined.status >= 300){ problem.textContent = errorText(joined.json); return }
    const members = await api("GET", `/api/channels/${room.id}/members`)
    if(members.status === 200){ members.json.items.forEach(u => names.set(u.user_id, u.name)) }
    const channel = socket.channel(`channel:${room.id}`)
    const presence = new Presence(channel)
    current = {id: room.id, name: room.name, channel, presence}
    typing.clear()
    drawTyping()
    presence.onSync(drawOnline)
    channel.on("new_message", ({seq, ...m}) => {
      if(m.parent_id){ return }
      upsert(m)
      typing.delete(m.user_id)
      drawTyping()
      if(m.user_id !== me.id){ markRead(m.id) }
    })
    channel.on("message_updated", ({seq, ...m}) => upsert(m))
    channel.on("message_deleted", ({id}) => { const n = messages.querySelector(`li[data-id="${id}"]`); if(n){ n.remove() } })
    channel.on("reactions_updated", ({message_id, reactions}) => {
      const n = messages.querySelector(`li[data-id="${message_id}"]`)
      if(n && n.message){ upsert({...n.message, reactions}) }
    })
    channel.on("typing", ({user_id, typing: on}) => { if(on){ typing.add(user_id) } else { typing.delete(user_id) }; drawTyping() })
    document.getElementById("room-title").textContent = `# ${room.name}`
    document.getElementById("room").hidden = false
    channel.join()
      .receive("ok", reply => {
        messages.replaceChildren()
        reply.messages.forEach(upsert)
        const last = reply.messages[reply.messages.length - 1]
        if(last){ markRead(last.id) }
      })
      .receive("error", r => { problem.textContent = `Could not join ${room.name}: ${r.reason}` })
    drawRooms()
  }

  // Unread counts of every room, kept current by the server on user:<me>.
  const mine = socket.channel(`user:${me.id}`)
  mine.on("unread_updated", ({channel_id, count}) => {
    unread.set(channel_id, current && current.id === channel_id ? 0 : count)
    if(!rooms.some(r => r.id === channel_id)){ loadRooms() } else { drawRooms() }
  })
  mine.join().receive("ok", reply => {
    for(const [id, n] of Object.entries(reply.unread || {})){ unread.set(Number(id), n) }
    drawRooms()
  })

  // Typing: start on input, at most every 2 s; stop on send or when the box empties.
  const form = document.getElementById("send")
  let typingSent = 0
  form.body.addEventListener("input", () => {
    if(!current){ return }
    if(form.body.value === ""){ typingSent = 0; push(current.channel, "typing_stop", {}).catch(() => {}); return }
    if(Date.now() - typingSent > 2000){ typingSent = Date.now(); push(current.channel, "typing_start", {}).catch(() => {}) }
  })
  form.addEventListener("submit", async e => {
    e.preventDefault()
    if(!current){ return }
    try {
      const m = await push(current.channel, "new_message", {body: form.body.value})
      upsert(m)
      form.body.value = ""
      typingSent = 0
      push(current.channel, "typing_stop", {}).catch(() => {})
    } catch(err){ say(err) }
  })

  document.getElementById("new-room").addEventListener("submit", async e => {
    e.preventDefault()
    const f = e.target
    const input = f.elements.namedItem("name")
    const r = await api("POST", "/api/channels", {name: input.value, private: false})
    if(r.status !== 201){ problem.textContent = errorText(r.json); return }
    input.value = ""
    await loadRooms()
    open(r.json)
  })

  await loadRooms()
  setInterval(loadRooms, 5000)
})

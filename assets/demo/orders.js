// The café's order board: `collection:orders` records with a status, one column per status.
// Cards move through PATCH; every open board applies the `change` events it receives, and a
// rejoin after a reconnect asks only for what it missed ({since: seq}).
import {api, el, errorText, signIn, time} from "/assets/demo.js"

const STATES = [["new", "New"], ["preparing", "Preparing"], ["ready", "Ready"], ["served", "Served"]]
const orders = new Map()
let seq = null

signIn(async (me, socket) => {
  const problem = document.getElementById("orders-error")
  const board = document.getElementById("board")
  const columns = new Map(STATES.map(([key, title]) => {
    const list = el("ul", {"aria-label": `${title} orders`})
    board.append(el("section", {class: "column", "aria-label": title}, el("h2", {text: title}), list))
    return [key, list]
  }))

  const move = async (id, status) => {
    const r = await api("PATCH", `/api/collections/orders/records/${id}`, {status})
    if(r.status !== 200){ problem.textContent = errorText(r.json) }
  }

  const draw = () => {
    for(const list of columns.values()){ list.replaceChildren() }
    const sorted = [...orders.values()].sort((a, b) => a.created < b.created ? -1 : 1)
    for(const o of sorted){
      const list = columns.get(o.status) || columns.get("new")
      const at = STATES.findIndex(([k]) => k === o.status)
      const buttons = STATES.filter(([k]) => k !== o.status).map(([k, title]) =>
        el("button", {type: "button", onclick: () => move(o.id, k)}, `Move to ${title}`))
      list.append(el("li", {class: "card order", "data-id": o.id, "data-status": o.status, "aria-label": `Order ${o.item} for ${o.customer}`},
        el("p", {class: "body"}, el("b", {text: o.item}), ` for ${o.customer}`),
        el("p", {class: "meta", text: `${at >= 0 ? STATES[at][1] : o.status} · ${time(o.created)}`}),
        ...buttons))
    }
  }

  const apply = ({action, record}) => {
    if(action === "delete"){ orders.delete(record.id) } else { orders.set(record.id, record) }
  }

  const reload = async () => {
    const r = await api("GET", "/api/collections/orders/records?perPage=500")
    if(r.status !== 200){ problem.textContent = errorText(r.json); return }
    orders.clear()
    r.json.items.forEach(o => orders.set(o.id, o))
  }

  const channel = socket.channel("collection:orders", () => seq === null ? {} : {since: seq})
  channel.on("change", change => {
    // A change the join reply already covered is not sent again; anything else is new.
    apply(change)
    seq = change.seq
    draw()
  })
  channel.join()
    .receive("ok", async reply => {
      if(reply.items){
        orders.clear()
        reply.items.forEach(o => orders.set(o.id, o))
      } else if(reply.reset){
        await reload()
      } else if(reply.changes){
        reply.changes.forEach(apply)
      }
      seq = reply.seq
      draw()
    })
    .receive("error", r => { problem.textContent = `Could not join the board: ${r.reason}` })

  const form = document.getElementById("new-order")
  form.addEventListener("submit", async e => {
    e.preventDefault()
    const r = await api("POST", "/api/collections/orders/records", {item: form.item.value, customer: form.customer.value, status: "new"})
    if(r.status === 201){ form.item.value = ""; form.customer.value = ""; problem.textContent = "" } else { problem.textContent = errorText(r.json) }
  })
})

// The community feed: posts, likes and comments over REST; `community:feed` keeps every open
// page up to date (new_post, post_updated, post_deleted, post_likes_updated,
// post_comments_updated).
import {api, el, errorText, signIn, time} from "/assets/demo.js"

const posts = new Map() // id -> {post, node}

signIn(async (me, socket) => {
  const problem = document.getElementById("feed-error")
  const list = document.getElementById("posts")

  if(!me.community_member){
    const join = el("button", {type: "button", onclick: async () => {
      const r = await api("POST", "/api/community/join")
      if(r.status < 300){ location.reload() } else { problem.textContent = errorText(r.json) }
    }}, "Join the community")
    document.getElementById("new-post").replaceWith(el("p", {}, "Only community members see the feed. ", join))
    return
  }

  const render = post => {
    const old = posts.get(post.id)
    const comments = old ? old.comments : el("ul", {"aria-label": `Comments on post ${post.id}`})
    const input = el("input", {name: "comment", autocomplete: "off", required: true})
    const liked = (post.liked_by_user_ids || []).includes(me.id)
    const node = el("li", {class: "card post", "data-id": String(post.id), "aria-label": `Post by ${post.author_name}`},
      el("p", {class: "body", text: post.body}),
      el("p", {class: "meta", text: `${post.author_name} · ${time(post.inserted_at)}`}),
      el("button", {type: "button", "aria-pressed": String(liked), onclick: () => like(post.id)}, `${liked ? "Unlike" : "Like"} (${post.likes_count})`),
      el("span", {class: "meta comments-count", text: ` ${post.comments_count} comment${post.comments_count === 1 ? "" : "s"}`}),
      comments,
      el("form", {"aria-label": `Comment on post ${post.id}`, onsubmit: async e => {
        e.preventDefault()
        const r = await api("POST", `/api/community/posts/${post.id}/comments`, {body: input.value})
        if(r.status === 201){ input.value = "" } else { problem.textContent = errorText(r.json) }
      }}, el("label", {}, "Comment", input), el("button", {type: "submit"}, "Add comment"))
    )
    if(old){ old.node.replaceWith(node) } else { list.prepend(node) }
    posts.set(post.id, {post, node, comments})
  }

  const loadComments = async id => {
    const entry = posts.get(id)
    if(!entry){ return }
    const r = await api("GET", `/api/community/posts/${id}/comments`)
    if(r.status !== 200){ return }
    entry.comments.replaceChildren(...r.json.items.map(c =>
      el("li", {class: "comment"}, el("b", {text: c.author_name}), ` ${c.body}`)))
  }

  const like = async id => {
    const r = await api("POST", `/api/community/posts/${id}/like`)
    if(r.status !== 200){ problem.textContent = errorText(r.json) }
  }

  const patch = (id, fields) => {
    const entry = posts.get(id)
    if(entry){ render({...entry.post, ...fields}) }
  }

  const feed = socket.channel("community:feed")
  feed.on("new_post", ({seq, ...post}) => { if(!posts.has(post.id)){ render(post) } })
  feed.on("post_updated", ({seq, ...post}) => patch(post.id, post))
  feed.on("post_deleted", ({id}) => { const e = posts.get(id); if(e){ e.node.remove(); posts.delete(id) } })
  feed.on("post_likes_updated", ({id, likes_count, liked_by_user_ids}) => patch(id, {likes_count, liked_by_user_ids}))
  feed.on("post_comments_updated", ({id, comments_count}) => { patch(id, {comments_count}); loadComments(id) })

  const load = async () => {
    const r = await api("GET", "/api/community/posts?limit=20")
    if(r.status !== 200){ problem.textContent = errorText(r.json); return }
    list.replaceChildren()
    posts.clear()
    for(const post of r.json.items.slice().reverse()){ render(post) }
    await Promise.all(r.json.items.map(p => loadComments(p.id)))
  }
  // Joined (and rejoined after a reconnect): read the feed again, so nothing missed stays missing.
  feed.join()
    .receive("ok", load)
    .receive("error", r => { problem.textContent = `Could not join the feed: ${r.reason}` })

  const form = document.getElementById("new-post")
  form.addEventListener("submit", async e => {
    e.preventDefault()
    const r = await api("POST", "/api/community/posts", {body: form.body.value})
    if(r.status === 201){ form.body.value = ""; problem.textContent = ""; render(r.json) } else { problem.textContent = errorText(r.json) }
  })
})

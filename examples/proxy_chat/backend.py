#!/usr/bin/env python3
"""A chat room's channel logic, in Python with no framework, behind Fawkes's proxied channels.

Fawkes keeps the WebSockets; each join, message and leave of a `room:*` topic comes here as a
signed JSON POST, and the answer says what to do. Run it with the secret Fawkes signs with:

    FAWKES_BACKEND_SECRET=s3cret python3 examples/proxy_chat/backend.py 8001

- POST /join: a nick (1-20 letters, digits, `_` or `-`) is required; `room:staff` also wants
  `"password": "staff"`. The joiner is tracked in the room's presence under their nick.
- POST /push: `new_msg` is broadcast to the room with bad words masked (a profanity filter);
  the sender's message count is kept in the channel's assigns. `leave_room` closes the channel.
- POST /leave: logged.

Every request's `x-fawkes-signature` is checked (HMAC-SHA256 of the body with the secret); a
request without a good one is answered 401 and nothing else.
"""

import hashlib
import hmac
import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("FAWKES_BACKEND_SECRET", "").encode()
BAD_WORDS = {"darn", "heck", "frak"}
NICK = re.compile(r"^[A-Za-z0-9_-]{1,20}$")
MAX_BODY = 1 << 20


def masked(text):
    """Each bad word (any case) becomes as many asterisks."""
    return re.sub(
        r"[A-Za-z]+",
        lambda m: "*" * len(m.group()) if m.group().lower() in BAD_WORDS else m.group(),
        text,
    )


def join(req):
    payload = req["payload"]
    nick = payload.get("nick", "")
    if not isinstance(nick, str) or not NICK.match(nick):
        return {"reply": {"status": "error", "response": {"reason": "pick a nick: 1-20 letters, digits, _ or -"}}}
    if req["topic"] == "room:staff" and payload.get("password") != "staff":
        return {"reply": {"status": "error", "response": {"reason": "staff only"}}}
    return {
        "reply": {"status": "ok", "response": {"welcome": nick}},
        "assigns": {"nick": nick, "sent": 0},
        "track": {"key": nick, "meta": {"nick": nick}},
    }


def push(req):
    assigns = req["assigns"]
    if req["event"] == "new_msg":
        body = req["payload"].get("body")
        if not isinstance(body, str) or not body.strip():
            return {"reply": {"status": "error", "response": {"reason": "empty message"}}}
        sent = assigns.get("sent", 0) + 1
        return {
            "reply": {"status": "ok", "response": {"sent": sent}},
            "broadcast": [{"event": "new_msg", "payload": {"nick": assigns["nick"], "body": masked(body)}}],
            "assigns": dict(assigns, sent=sent),
        }
    if req["event"] == "leave_room":
        return {"reply": {"status": "ok", "response": {"bye": assigns.get("nick")}}, "close": True}
    return {"reply": {"status": "error", "response": {"reason": "unknown event " + req["event"]}}}


def leave(req):
    print("left:", req["topic"], req["assigns"].get("nick"), req["payload"].get("reason"), flush=True)
    return {}


ROUTES = {"/join": join, "/push": push, "/leave": leave}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Fawkes reuses its connections

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            return self.answer(413, {"error": "too large"})
        body = self.rfile.read(length)
        expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        given = self.headers.get("x-fawkes-signature", "")
        if not SECRET or not hmac.compare_digest(expected, given):
            return self.answer(401, {"error": "bad signature"})
        route = ROUTES.get(self.path)
        if route is None:
            return self.answer(404, {"error": "no such route"})
        self.answer(200, route(json.loads(body)))

    def answer(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8001
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("listening on", server.server_address[1], flush=True)
    server.serve_forever()

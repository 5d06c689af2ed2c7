"""echo-backend in Python (standard library only): what a proxied push costs with a backend
written the plain way. Checks each request's signature and answers the push with its payload.

    python3 bench/scripts/echo_backend.py 4101 s3cret
"""
import hashlib, hmac, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = sys.argv[2].encode()


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle holds the body back until
    # Fawkes's delayed ACK (40 ms on Linux).
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        good = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(good, self.headers.get("x-fawkes-signature", "")):
            status, out = 401, b'{"error":"bad signature"}'
        else:
            payload = json.loads(body)["payload"]
            status, out = 200, json.dumps({"reply": {"status": "ok", "response": payload}}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


class S(ThreadingHTTPServer):
    request_queue_size = 128  # the bench's connections arrive at once (the default is 5)


s = S(("127.0.0.1", int(sys.argv[1])), H)
print("echo backend listening on", s.server_address[1], flush=True)
s.serve_forever()

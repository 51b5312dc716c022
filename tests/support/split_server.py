"""An HTTP/1.1 server that sends a secret split across two chunked writes, 200 ms apart.

usage: python3 split_server.py PORT
  GET /sse   text/event-stream: one event whose JSON data holds the secret, cut mid-token
  GET /text  text/plain: the secret cut mid-token between two chunks
"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/sse":
            body = ('data: {"token_note": "use %s now"}\n\n' % SECRET).encode()
            content_type = "text/event-stream"
        else:
            body = ("log line\nkey %s end\n" % SECRET).encode()
            content_type = "text/plain"
        cut = body.index(SECRET.encode()) + 10
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.chunk(body[:cut])
        time.sleep(0.2)
        self.chunk(body[cut:])
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

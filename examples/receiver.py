"""A tiny webhook receiver for trying webhookd locally: prints what arrives, answers 204.

python3 examples/receiver.py 9000
"""

import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        print(self.headers.get("webhook-id"), self.headers.get("webhook-signature"), body.decode())
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
HTTPServer(("127.0.0.1", port), Handler).serve_forever()

#!/usr/bin/env python3
"""A minimal HTTP endpoint for trying mfoundry's http output: every POST/PUT body is written
to DIR/<n>.hl7 (or .json) and answered 200. Usage: http-receiver.py [PORT] [DIR]."""

import http.server
import itertools
import pathlib
import sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 2580
DIR = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "http-in")
DIR.mkdir(parents=True, exist_ok=True)
COUNTER = itertools.count(1)


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        suffix = "json" if "json" in self.headers.get("Content-Type", "") else "hl7"
        (DIR / f"{next(COUNTER)}.{suffix}").write_bytes(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST

    def log_message(self, format, *args):
        print(f"{self.command} {self.path} -> 200", flush=True)


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Receiver).serve_forever()

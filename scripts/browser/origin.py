#!/usr/bin/env python3
"""The static origin of scripts/browser-check.sh (standard library only).

    origin.py PORT DIRECTORY

Serves DIRECTORY on 127.0.0.1:PORT like `python3 -m http.server`, plus `GET /hold?ms=N`,
which answers only after N milliseconds (at most 30 s). The check page keeps such a request
pending until its WebSocket message arrives, then aborts it: headless Chromium does not let
its virtual time run out while a fetch is pending, so the dumped DOM is taken after the
message, not before.
"""
import functools
import http.server
import sys
import time
import urllib.parse


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/hold":
            return super().do_GET()
        query = urllib.parse.parse_qs(url.query)
        ms = min(int(query.get("ms", ["1000"])[0]), 30000)
        time.sleep(ms / 1000)
        body = b"released\n"
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the page aborted the request

    def log_message(self, fmt, *args):
        sys.stderr.write("origin: " + (fmt % args) + "\n")


def main():
    port, directory = int(sys.argv[1]), sys.argv[2]
    handler = functools.partial(Handler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A minimal raw WebSocket client for scripts/browser-check.sh (standard library only).

    ws_publish.py HOST PORT PATH NONCE MESSAGE READY_FILE TIMEOUT_S [COMMAND...]

Connects to ws://HOST:PORT/PATH (a broadcast channel, raw mode), writes READY_FILE once
subscribed, and waits for the browser's `ready:NONCE`. Then it publishes MESSAGE: by running
COMMAND (e.g. `wsedgectl ... publish CHANNEL MESSAGE`; it must exit 0, and since this client
is subscribed too, MESSAGE must come back to it), or without COMMAND by sending MESSAGE
itself as a raw client. Exits 0 once published; 1 if the handshake fails, the browser does
not show up within TIMEOUT_S, or the command fails.
"""
import base64
import hashlib
import os
import socket
import struct
import subprocess
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError("connection closed")
        out += chunk
    return out


def read_frame(sock):
    b0, b1 = read_exact(sock, 2)
    length = b1 & 0x7F
    if length == 126:
        length = struct.unpack("!H", read_exact(sock, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", read_exact(sock, 8))[0]
    mask = read_exact(sock, 4) if b1 & 0x80 else None
    payload = read_exact(sock, length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return b0 & 0x0F, payload


def send_frame(sock, opcode, payload):
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def main():
    host, port, path, nonce, message, ready_file, timeout = sys.argv[1:8]
    command = sys.argv[8:]
    published = False
    deadline = time.monotonic() + float(timeout)
    sock = socket.create_connection((host, int(port)), timeout=float(timeout))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            print("publisher: connection closed during the handshake", file=sys.stderr)
            return 1
        head += chunk
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    if " 101 " not in status + " " or want.encode() not in head:
        print(f"publisher: handshake refused: {head!r}", file=sys.stderr)
        return 1
    print(f"publisher: subscribed to {path} ({status})", file=sys.stderr)
    with open(ready_file, "w") as f:
        f.write("ready\n")
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            what = "the published message back" if published else f"ready:{nonce} from the browser"
            print(f"publisher: no {what} within {timeout} s", file=sys.stderr)
            return 1
        sock.settimeout(left)
        try:
            opcode, payload = read_frame(sock)
        except (socket.timeout, EOFError) as e:
            print(f"publisher: reading (published: {published}): {e!r}", file=sys.stderr)
            return 1
        if opcode == 0x9:
            send_frame(sock, 0xA, payload)
            continue
        if opcode == 0x8:
            print(f"publisher: closed by the edge: {payload!r}", file=sys.stderr)
            return 1
        text = payload.decode(errors="replace")
        print(f"publisher: received {text!r}", file=sys.stderr)
        if text == f"ready:{nonce}" and not published:
            published = True
            if not command:
                send_frame(sock, 0x1, message.encode())
                print(f"publisher: published {message!r} as a raw client", file=sys.stderr)
                break
            run = subprocess.run(command, capture_output=True, text=True, timeout=float(timeout))
            shown = " ".join(command)
            print(
                f"publisher: ran {shown!r}: exit {run.returncode}, "
                f"stdout {run.stdout.strip()!r}, stderr {run.stderr.strip()!r}",
                file=sys.stderr,
            )
            if run.returncode != 0:
                return 1
        elif published and text == message:
            print("publisher: the published message came back to this subscriber too", file=sys.stderr)
            break
    time.sleep(0.5)
    send_frame(sock, 0x8, struct.pack("!H", 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A second, independent latency client for docs/benchmarks.md ("Latency beside idle
connections"): N WebSocket connections on one asyncio loop echo 64 B binary messages, each
sending its next one when the echo is in (RATE 0) or at RATE msg/s; after 1 s of warm-up it
prints the round trips' p50 / p99 / p99.9 / max in ms. Standard library only.

Usage: pingpong.py HOST PORT N DURATION_S [RATE]"""
import asyncio, base64, os, sys, time
if len(sys.argv) < 5:
    sys.exit(__doc__)
host, port, n, dur = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
def frame(payload):
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x82, 0x80 | len(payload)]) + mask + body
async def conn(samples, t_end):
    r, w = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    w.write(f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await r.readuntil(b"\r\n\r\n")
    msg = frame(b"x" * 64)
    nxt = time.monotonic()
    warm = time.monotonic() + 1.0
    while True:
        now = time.monotonic()
        if now >= t_end: break
        if rate:
            if now < nxt:
                await asyncio.sleep(nxt - now)
            nxt += 1.0 / rate
        t0 = time.monotonic()
        w.write(msg)
        await r.readexactly(2 + 64)
        if t0 > warm:
            samples.append(time.monotonic() - t0)
    w.close()
async def main():
    samples = []
    t_end = time.monotonic() + 1.0 + dur
    await asyncio.gather(*(conn(samples, t_end) for _ in range(n)))
    s = sorted(samples); k = len(s)
    q = lambda p: s[min(k - 1, int(k * p))] * 1e3
    print(f"rtt n={k} ({k/dur:.0f}/s) p50 {q(0.5):.3f} p99 {q(0.99):.3f} p99.9 {q(0.999):.3f} max {s[-1]*1e3:.3f} ms")
asyncio.run(main())

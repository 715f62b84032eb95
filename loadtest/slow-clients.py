#!/usr/bin/env python3
"""Slow-header clients ("slowloris") for run.sh's SLOW_CLIENTS knob.

Keeps N connections open to the server, each sending its request head one byte a second (a new
connection replaces every one the server closes), until SIGTERM or --seconds pass. Then prints,
as JSON, how many connections were opened, how many the server closed and how long the longest
stayed open, so a run shows both that slow clients are cut off at the header timeout and what
they did to the normal traffic's latency.
"""
import argparse
import json
import selectors
import signal
import socket
import sys
import time

HEAD = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--every", type=float, default=1.0, help="seconds between bytes")
    ap.add_argument("--out", default="-")
    a = ap.parse_args()
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    sel = selectors.DefaultSelector()
    conns = {}  # socket -> [opened_at, bytes_sent]
    stats = {"opened": 0, "closed_by_server": 0, "refused": 0, "got_408": 0, "open_s": []}

    def open_one():
        try:
            s = socket.create_connection((a.host, a.port), timeout=2)
        except OSError:
            stats["refused"] += 1
            return
        s.setblocking(False)
        conns[s] = [time.monotonic(), 0]
        sel.register(s, selectors.EVENT_READ)
        stats["opened"] += 1

    def close(s, by_server):
        opened, _ = conns.pop(s)
        sel.unregister(s)
        s.close()
        if by_server:
            stats["closed_by_server"] += 1
            stats["open_s"].append(time.monotonic() - opened)

    t0 = time.monotonic()
    for _ in range(a.n):
        open_one()
    next_tick = time.monotonic()
    while not stop[0] and time.monotonic() - t0 < a.seconds:
        timeout = max(0.0, next_tick - time.monotonic())
        for key, _ in sel.select(timeout):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if b" 408 " in data:
                stats["got_408"] += 1
            if not data:
                close(s, True)
        if time.monotonic() >= next_tick:
            next_tick += a.every
            for s, st in list(conns.items()):
                if st[1] < len(HEAD):
                    try:
                        s.send(HEAD[st[1] : st[1] + 1])
                        st[1] += 1
                    except OSError:
                        close(s, True)
            while len(conns) < a.n and not stop[0]:
                before = stats["opened"]
                open_one()
                if stats["opened"] == before:
                    break
    for s in list(conns):
        close(s, False)
    open_s = sorted(stats.pop("open_s"))
    stats["longest_open_s"] = round(open_s[-1], 2) if open_s else None
    stats["median_open_s"] = round(open_s[len(open_s) // 2], 2) if open_s else None
    stats["clients"] = a.n
    out = json.dumps(stats)
    if a.out == "-":
        print(out)
    else:
        with open(a.out, "w") as f:
            f.write(out + "\n")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A fast local webhook receiver for the dispatcher benchmark (stdlib only).

asyncio (a Protocol), raw HTTP/1.1 with keep-alive and TCP_NODELAY (no http.server: its per-request
overhead and Nagle + delayed ACK would add tens of milliseconds). Every POST is answered
`200 {}` at once; the arrival time (time.time(), the same clock as the driver's commit
timestamps) is recorded under the body's "message_id".

  POST /hook    a delivery (JSON body with "message_id")
  GET  /stats   {"requests", "unique", "duplicates", "arrivals": {message_id: unix time}}
  POST /reset   forget everything

Usage: receiver.py --port-file PATH   (binds 127.0.0.1 on a free port and writes it there)
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import time

arrivals = {}
stats = {"requests": 0, "duplicates": 0, "bad": 0}


def response(status, body):
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


OK = response("200 OK", b"{}")


class Hook(asyncio.Protocol):
    """One keep-alive connection. A Protocol, not streams: a coroutine per request would make
    this receiver, not the dispatcher, the bottleneck of the benchmark."""

    def connection_made(self, transport):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        now = time.time()
        buf = self.buf + data
        out = []
        close = False
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, path, _ = lines[0].split(" ", 2)
            except ValueError:
                self.transport.close()
                return
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    length = int(v)
                elif k == "connection" and v.strip().lower() == "close":
                    close = True
            if len(buf) < end + 4 + length:
                break
            body = buf[end + 4:end + 4 + length]
            buf = buf[end + 4 + length:]
            out.append(self.answer(method, path, body, now))
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.close()

    @staticmethod
    def answer(method, path, body, now):
        if method == "POST" and path == "/hook":
            stats["requests"] += 1
            try:
                mid = json.loads(body)["message_id"]
            except (ValueError, KeyError, TypeError):
                stats["bad"] += 1
                mid = None
            if mid is not None:
                if mid in arrivals:
                    stats["duplicates"] += 1
                else:
                    arrivals[mid] = now
            return OK
        if method == "GET" and path == "/stats":
            payload = json.dumps({**stats, "unique": len(arrivals), "arrivals": arrivals}).encode()
            return response("200 OK", payload)
        if method == "POST" and path == "/reset":
            arrivals.clear()
            stats.update(requests=0, duplicates=0, bad=0)
            return OK
        return response("404 Not Found", b"{}")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Hook, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, args.port_file)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())

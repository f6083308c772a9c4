#!/usr/bin/env python3
"""A fast local webhook receiver for the dispatcher benchmark (stdlib only).

asyncio, raw HTTP/1.1 with keep-alive and TCP_NODELAY (no http.server: its per-request
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


async def handle(reader, writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            now = time.time()
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
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
                writer.write(OK)
            elif method == "GET" and path == "/stats":
                payload = json.dumps({**stats, "unique": len(arrivals), "arrivals": arrivals}).encode()
                writer.write(response("200 OK", payload))
            elif method == "POST" and path == "/reset":
                arrivals.clear()
                stats.update(requests=0, duplicates=0, bad=0)
                writer.write(OK)
            else:
                writer.write(response("404 Not Found", b"{}"))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())

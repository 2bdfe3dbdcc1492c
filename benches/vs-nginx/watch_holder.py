#!/usr/bin/env python3
"""A watch that never ends, for bench.py's idle-stream scenario (Python 3 stdlib only).

An asyncio HTTP/1.1 server on 127.0.0.1:<port> that answers every request as a kube-apiserver answers
`GET ...?watch=true`: `200 OK`, `Content-Type: application/json`, `Transfer-Encoding: chunked`, one chunk
holding one ADDED event line, and then nothing: the connection stays open and idle until the client
closes it. On SIGUSR1 it ends every watch it holds (the last chunk, then close), as an apiserver does
when a watch times out. bench.py puts a TLS nginx in front of it (the gateway only accepts https://
apiservers) and starts and stops it.

    python3 watch_holder.py PORT
"""
import asyncio
import signal
import sys

EVENT = (b'{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"bench",'
         b'"namespace":"default","resourceVersion":"1"}}}\n')
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
FIRST = HEAD + b"%x\r\n" % len(EVENT) + EVENT + b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"

held = set()


class Watch(asyncio.Protocol):
    """One client connection: answer the first request head, then hold the connection."""

    def connection_made(self, transport):
        self.transport, self.head, self.answered = transport, b"", False
        held.add(self)

    def data_received(self, data):
        if self.answered:
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.answered, self.head = True, b""
            self.transport.write(FIRST)

    def connection_lost(self, exc):
        held.discard(self)

    def end(self):
        if self.answered:
            self.transport.write(LAST_CHUNK)
        self.transport.close()


def end_all():
    for watch in list(held):
        watch.end()


async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Watch, "127.0.0.1", port, backlog=4096, reuse_address=True)
    loop.add_signal_handler(signal.SIGUSR1, end_all)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    print(f"holding watches on 127.0.0.1:{port}", flush=True)
    async with server:
        await stop


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

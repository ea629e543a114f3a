#!/usr/bin/env python3
"""Helpers of benches/held.sh: an echo backend and a client that holds
connections.

    held.py echo PORT                    echo every byte back until EOF
    held.py hold PORT N [--pid P ...]    open N connections, each proven by
                                         an echo; report RSS per connection
                                         idle, then after 64 KiB each way

`hold` prints one JSON object. The RSS figures are the processes given with
--pid (their VmRSS summed), measured before any connection, with all held
idle, and with all held idle again after every connection has sent 64 KiB
and read it back.
"""

import asyncio
import json
import resource
import sys
import time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


async def echo(port):
    async def serve(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def roundtrip(reader, writer, payload, timeout):
    writer.write(payload)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
    return got == payload


async def hold(port, n, pids, batch=200, used=65536):
    conns = []
    failed = 0

    async def one(k):
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 10
            )
        except (OSError, asyncio.TimeoutError):
            return None
        try:
            if await roundtrip(r, w, b"held %07d\n" % k, 10):
                return (r, w)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        w.close()
        return None

    await asyncio.sleep(0.5)
    rss0 = rss_kib(pids)
    started = time.monotonic()
    for start in range(0, n, batch):
        got = await asyncio.gather(*(one(k) for k in range(start, min(n, start + batch))))
        for c in got:
            if c is None:
                failed += 1
            else:
                conns.append(c)
    opened_s = time.monotonic() - started
    await asyncio.sleep(1.0)
    rss1 = rss_kib(pids)
    held = len(conns)

    # Every held connection echoes its own bytes once more.
    async def again(k, c):
        try:
            return await roundtrip(c[0], c[1], b"again %07d\n" % k, 10)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return False

    ok = 0
    for start in range(0, held, batch):
        got = await asyncio.gather(
            *(again(k, conns[k]) for k in range(start, min(held, start + batch)))
        )
        ok += sum(1 for g in got if g)

    # 64 KiB each way on every connection, then idle again.
    payload = bytes(range(256)) * (used // 256)

    async def bulk(c):
        try:
            return await roundtrip(c[0], c[1], payload, 30)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return False

    moved = 0
    for start in range(0, held, 50):
        got = await asyncio.gather(*(bulk(c) for c in conns[start:start + 50]))
        moved += sum(1 for g in got if g)
    await asyncio.sleep(1.0)
    rss2 = rss_kib(pids)
    for _, w in conns:
        w.close()
    per = lambda a, b: round((b - a) * 1024 / held) if held else None
    print(json.dumps({
        "attempted": n,
        "held": held,
        "echoed_again": ok,
        "failed": failed,
        "opened_s": round(opened_s, 2),
        "rss_kib": [rss0, rss1, rss2],
        "idle_bytes_per_conn": per(rss0, rss1),
        "used_bytes_per_conn": per(rss0, rss2),
        "moved_64k": moved,
    }))


def main():
    raise_nofile()
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "echo":
        asyncio.run(echo(int(args[1])))
    elif len(args) >= 3 and args[0] == "hold":
        pids = [int(p) for i, p in enumerate(args) if i > 0 and args[i - 1] == "--pid"]
        asyncio.run(hold(int(args[1]), int(args[2]), pids))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

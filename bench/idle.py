"""Memory per idle keep-alive client connection: open N connections, send one request on each, keep
them open and idle, and divide the proxy's RSS growth by N. Seawall, nginx and HAProxy, one run.

Usage: python3 bench/idle.py [--connections 8000] [--rounds 3]
Writes bench/results/idle.md.
"""

import argparse
import asyncio

import common as c

ORIGIN, NGINX, HAPROXY, SEAWALL = 18000, 18001, 18002, 18003
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


async def open_idle(port, n, concurrency=400, tls=None):
    """`n` connections with one answered request each; over TLS with the context `tls`."""
    conns = []
    sem = asyncio.Semaphore(concurrency)
    name = "bench.test" if tls else None

    async def one():
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls,
                                                           server_hostname=name)
            writer.write(REQUEST)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n")
                          if l.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            conns.append(writer)

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


async def measure(proc, port, n, tls=None):
    """The proxy's RSS growth per idle connection."""
    pids = proc.pids()
    warm = await open_idle(port, 50, tls=tls)
    for w in warm:
        w.close()
    await asyncio.sleep(0.5)
    before = c.rss_kib(pids)
    conns = await open_idle(port, n, 200 if tls else 400, tls)
    # Let the proxy settle into its idle state (Seawall parks an idle connection after 0.25 s and
    # returns freed memory once a second).
    await asyncio.sleep(2.5)
    after = c.rss_kib(proc.pids())
    for w in conns:
        w.close()
    await asyncio.sleep(0.5)
    return (after - before) * 1024 / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(c.ROOT / "bench" / "results" / "idle.md"))
    args = ap.parse_args()
    c.setup()
    c.need("nginx", "haproxy")
    binary = c.build_seawall()
    origin = c.nginx_origin(ORIGIN)
    peers = [
        ("nginx 2 workers", lambda: c.nginx_proxy(NGINX, ORIGIN), NGINX),
        ("HAProxy nbthread 2", lambda: c.haproxy(HAPROXY, ORIGIN), HAPROXY),
        ("Seawall 2 workers", lambda: c.seawall(binary, SEAWALL, 19903, ORIGIN), SEAWALL),
    ]
    try:
        results = c.run_rounds(peers, args.rounds,
                               lambda name, proc, port: asyncio.run(measure(proc, port, args.connections)))
    finally:
        origin.stop()
    lines = [c.header("Memory per idle keep-alive connection",
                      f"python3 bench/idle.py --connections {args.connections} --rounds {args.rounds}"),
             f"- {args.connections} client connections, one request each (1 KiB answer from an nginx "
             "origin), then idle; growth of the proxy's RSS (all processes) divided by the connections",
             f"- medians of {args.rounds} rounds",
             "", "| proxy | bytes per idle connection | rounds |", "|---|---|---|"]
    for name, _, _ in peers:
        runs = results[name]
        lines.append(f"| {name} | {c.median(runs):,.0f} | {', '.join(f'{r:,.0f}' for r in runs)} |")
    c.write_result(args.out, lines)


if __name__ == "__main__":
    main()

"""TLS termination of Seawall against nginx and HAProxy, one run, each in front of the same plain
nginx origin, all with the same ECDSA P-256 certificate (made here with openssl):

- keep-alive: wrk over TLS on 64 kept-alive connections; CPU µs per request of the proxy;
- full handshakes: wrk with `Connection: close`, so each request opens a new connection with a
  full handshake (wrk does not resume sessions); handshakes per second and the proxy's CPU per
  handshake (client and proxies share the 2 cores: compare within one run);
- idle: N TLS connections, one request each, then idle; the proxy's RSS growth divided by N.

Usage: python3 bench/tls.py [--seconds 10] [--rounds 3] [--idle 4000]
Writes bench/results/tls.md.
"""

import argparse
import asyncio
import ssl
import subprocess

import common as c
import idle

ORIGIN, NGINX, HAPROXY, SEAWALL = 18000, 18011, 18012, 18013


def make_certificate():
    cert, key = c.TMP / "tls-bench.pem", c.TMP / "tls-bench.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
                    "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test"],
                   check=True, capture_output=True)
    combined = c.TMP / "tls-bench-combined.pem"
    combined.write_text(cert.read_text() + key.read_text())
    return cert, key, combined


def nginx_tls(port, cert, key):
    conf = c.TMP / "tls-nginx.conf"
    conf.write_text(f"""
worker_processes 2;
daemon off;
pid {c.TMP}/tls-nginx.pid;
error_log {c.TMP}/tls-nginx.err warn;
events {{ worker_connections 9000; }}
worker_rlimit_nofile 20000;
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream origin {{ server 127.0.0.1:{ORIGIN}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} ssl backlog=4096 reuseport;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    return c.Proc("tls-nginx", ["nginx", "-c", str(conf), "-p", str(c.TMP)], port)


def haproxy_tls(port, combined):
    conf = c.TMP / "tls-haproxy.cfg"
    conf.write_text(f"""
global
  nbthread 2
  maxconn 9000
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port} ssl crt {combined} alpn http/1.1
  default_backend be
backend be
  server origin 127.0.0.1:{ORIGIN}
""")
    return c.Proc("tls-haproxy", ["haproxy", "-f", str(conf)], port)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=int, default=4000, help="idle TLS connections")
    ap.add_argument("--out", default=str(c.ROOT / "bench" / "results" / "tls.md"))
    args = ap.parse_args()
    c.setup()
    c.need("nginx", "haproxy", "wrk", "openssl")
    binary = c.build_seawall()
    cert, key, combined = make_certificate()
    tls = f'tls = {{ certificates = [{{ cert = "{cert}", key = "{key}" }}] }}'
    origin = c.nginx_origin(ORIGIN)
    peers = [
        ("nginx 2 workers", lambda: nginx_tls(NGINX, cert, key), NGINX),
        ("HAProxy nbthread 2", lambda: haproxy_tls(HAPROXY, combined), HAPROXY),
        ("Seawall 2 workers", lambda: c.seawall(binary, SEAWALL, 19913, ORIGIN, "tls-seawall",
                                                server_extra=tls), SEAWALL),
    ]

    def cpu_per(proc, run_load):
        pids = proc.pids()
        before = c.cpu_seconds(pids)
        run = run_load()
        run["cpu_us"] = (c.cpu_seconds(pids) - before) * 1e6 / max(1, run["requests"])
        run.pop("raw")
        return run

    def measure(name, proc, port):
        keepalive = lambda: c.wrk(port, args.seconds, 64, scheme="https")
        handshakes = lambda: c.wrk(port, args.seconds, 32, scheme="https",
                                   headers=("Connection: close",))
        c.wrk(port, args.warmup, 64, scheme="https")
        kept = cpu_per(proc, keepalive)
        c.wrk(port, args.warmup, 32, scheme="https", headers=("Connection: close",))
        full = cpu_per(proc, handshakes)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        idle_bytes = asyncio.run(idle.measure(proc, port, args.idle, context))
        return {"keepalive_rps": kept["rps"], "keepalive_cpu_us": kept["cpu_us"],
                "keepalive_p99_ms": kept["p99_ms"], "handshakes_per_s": full["rps"],
                "handshake_cpu_us": full["cpu_us"], "handshake_p99_ms": full["p99_ms"],
                "idle_bytes": idle_bytes, "non2xx": kept["non2xx"] + full["non2xx"]}

    try:
        results = c.run_rounds(peers, args.rounds, measure)
    finally:
        origin.stop()

    med = lambda name, key: c.median([r[key] for r in results[name]])
    nginx = "nginx 2 workers"
    lines = [c.header("TLS termination",
                      f"python3 bench/tls.py --seconds {args.seconds} --rounds {args.rounds} --idle {args.idle}"),
             "- certificate: ECDSA P-256, self-signed (openssl); TLS 1.3 negotiated by wrk (OpenSSL) "
             "and by Python's ssl for the idle connections",
             "- origin: nginx 1 worker over plain HTTP answering a fixed 1 KiB body",
             f"- keep-alive: wrk 1 thread, 64 connections, {args.warmup} s warm-up then {args.seconds} s; "
             "CPU is utime+stime of the proxy's processes divided by requests",
             f"- full handshakes: wrk 1 thread, 32 connections, `Connection: close` (a new connection and "
             "a full handshake per request; wrk does not resume sessions)",
             f"- idle: {args.idle} TLS connections, one request each, then idle 2.5 s; RSS growth of the "
             "proxy divided by the connections",
             f"- medians of {args.rounds} rounds; the load generator shares the 2 cores with the proxy",
             "",
             "| proxy | keep-alive req/s | CPU µs/req | vs nginx | p99 ms | handshakes/s | vs nginx | "
             "CPU µs/handshake | bytes per idle TLS connection | non-2xx |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, _, _ in peers:
        lines.append(
            f"| {name} | {med(name, 'keepalive_rps'):,.0f} | {med(name, 'keepalive_cpu_us'):.1f} | "
            f"{med(name, 'keepalive_cpu_us') / med(nginx, 'keepalive_cpu_us'):.2f}× | "
            f"{med(name, 'keepalive_p99_ms'):.2f} | {med(name, 'handshakes_per_s'):,.0f} | "
            f"{med(name, 'handshakes_per_s') / med(nginx, 'handshakes_per_s'):.2f}× | "
            f"{med(name, 'handshake_cpu_us'):.0f} | {med(name, 'idle_bytes'):,.0f} | "
            f"{sum(r['non2xx'] for r in results[name])} |")
    lines += ["", "Per round (keep-alive CPU µs/req; handshakes/s; idle bytes):", ""]
    for name, _, _ in peers:
        lines.append(f"- {name}: " + "; ".join(
            f"{r['keepalive_cpu_us']:.1f}, {r['handshakes_per_s']:,.0f}, {r['idle_bytes']:,.0f}"
            for r in results[name]))
    lines.append("")
    c.write_result(args.out, lines)


if __name__ == "__main__":
    main()

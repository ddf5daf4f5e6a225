#!/usr/bin/env python3
"""Turn run_all.sh output (stdin) into the markdown results table (medians of the runs)."""
import re, statistics as st, sys
rows = {}
for line in sys.stdin:
    if not line.startswith("RESULT"):
        continue
    f = line.rstrip("\n").split("\t")
    kv = dict(x.split("=", 1) for x in f[2:] if "=" in x)
    rows.setdefault(f[1], []).append(kv)
med = lambda xs: st.median(xs)
def m(store, k):
    return med([float(r[k]) for r in rows[store]])
out = []
if "calib" in rows:
    cs = "; ".join(f"{float(c['ops_s']):.0f} ops/s (mean {c['mean_us']} µs, p50 {c['p50_us']}, p99 {c['p99_us']})" for c in rows["calib"])
    out.append(f"Raw fsync calibration per round (write 4 KiB + fdatasync, 1 thread, 3 s): {cs}\n")
out.append("| store | acks/s (median of 3) | runs | mean batch | commit mean / p99 µs | bytes on disk per job | delete churn ops/s (batches of 64, non-durable) | disk after deletes + 1 durable commit | disk after explicit compaction |")
out.append("|---|---|---|---|---|---|---|---|---|")
for s in ("redb", "fjall"):
    if s not in rows: continue
    runs = "/".join(f"{float(r['acks_s']):.0f}" for r in rows[s])
    out.append(f"| {s} | **{m(s,'acks_s'):.0f}** | {runs} | {m(s,'mean_batch'):.1f} | {m(s,'commit_mean_us'):.0f} / {m(s,'commit_p99_us'):.0f} "
               f"| {m(s,'bytes_per_job'):.0f} (N≈{m(s,'jobs'):.0f}) | {m(s,'del_ops_s'):.0f} "
               f"| {m(s,'after_del_alloc')/2**20:.0f} MiB alloc ({m(s,'after_del_len')/2**20:.0f} MiB apparent) "
               f"| {m(s,'after_reclaim_alloc')/2**20:.1f} MiB ({m(s,'reclaim_s'):.2f} s) |")
if "redis" in rows:
    rs = []
    for r in rows["redis"]:
        csv = [x.strip('"') for x in re.findall(r'"[^"]*"', r["csv"])]
        rs.append((float(csv[1]), float(csv[2]), float(csv[6]), float(r["aof_bytes_per_job"]), float(r["mem_bytes_per_job"]), int(r["xlen"])))
    runs = "/".join(f"{x[0]:.0f}" for x in rs)
    out.append(f"| redis XADD, appendfsync always | **{med([x[0] for x in rs]):.0f}** | {runs} | n/a (event-loop group commit) "
               f"| client round-trip mean {med([x[1] for x in rs])*1000:.0f} / p99 {med([x[2] for x in rs])*1000:.0f} "
               f"| {med([x[3] for x in rs]):.0f} AOF (+{med([x[4] for x in rs]):.0f} RAM) (N={rs[0][5]}) | n/a | n/a | n/a |")
if "redb" in rows and "fjall" in rows:
    ratios = [float(f['acks_s'])/float(r['acks_s']) for r, f in zip(rows["redb"], rows["fjall"])]
    out.append(f"\nfjall/redb acks/s ratio per round (same round, same fsync regime): " + ", ".join(f"{x:.1f}x" for x in ratios))
print("\n".join(out))

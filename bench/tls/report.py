#!/usr/bin/env python3
"""Aggregate a bench/tls/run.sh results directory into results.md (printed too) and results.json.

    report.py RESULTS_DIR [--baseline nginx]

Reads meta.json and runs.jsonl (one line per run, from the shared harness's lib/record.py).
Per (scenario, LB): the MEDIAN over rounds of each metric, the min-max of rps, and the ratio
of the median rps and CPU-us/request to the baseline's.
"""
import json
import os
import re
import statistics
import sys

TITLE = {
    "tls-small": "TLS keep-alive, small response `/` (3 B), wrk -t1 -c{conns}",
    "tls-4k": "TLS keep-alive, 4 KiB response `/4k`, wrk -t1 -c{conns}",
    "tls-h2": "HTTP/2 over TLS (ALPN h2), `/`, h2load -t1 -c{h2c} -m{h2m}",
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def cipher(d, sc, rnd, lb):
    """The TLS cipher suite h2load reports in its raw output (wrk reports none)."""
    try:
        txt = open(os.path.join(d, f"raw-{sc}-{rnd}-{lb}.txt")).read()
    except OSError:
        return None
    m = re.search(r"^Cipher: (\S+)", txt, re.M)
    return m.group(1) if m else None


def main():
    d = sys.argv[1]
    base = sys.argv[sys.argv.index("--baseline") + 1] if "--baseline" in sys.argv else "nginx"
    meta = json.load(open(os.path.join(d, "meta.json")))
    runs = [json.loads(line) for line in open(os.path.join(d, "runs.jsonl")) if line.strip()]
    p = meta["params"]
    out = [f"# TLS LB benchmark {meta['started']}\n",
           f"LB pinned to CPU {p['lb_cpu']} (1 worker/thread), TLS on {meta['listen']} with one "
           f"ECDSA P-256 certificate; wrk/h2load + backend nginx pinned to CPU {p['gen_cpu']}. "
           f"{p['rounds']} interleaved round(s) x {p['duration']}s (+{p['warmup']}s warm-up); "
           f"medians, `rps range` = min-max over rounds. `CPU us/req` = LB process-tree "
           f"utime+stime per request; `rps/LB-core` = 1e6 / CPU us/req.\n",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(meta["versions"].items())) + "\n",
           "TLS negotiated by a client without ALPN (as wrk): "
           + ", ".join(f"{k} {v}" for k, v in sorted(meta.get("tls", {}).items())) + "\n"]
    summary = {}
    for sc in meta["scenarios"]:
        rows = [r for r in runs if r["scenario"] == sc]
        if not rows:
            continue
        summary[sc] = {}
        for lb in meta["lbs"]:
            rr = [r for r in rows if r["lb"] == lb]
            if not rr:
                continue
            s = {"rounds": len(rr)}
            for k in ("rps", "p50_ms", "p99_ms", "lat_mean_ms", "lat_max_ms", "lb_cpu_util_pct",
                      "cpu_us_per_req", "lb_peak_rss_kb", "upstream_conns", "requests"):
                s[k] = med([r.get(k) for r in rr])
            s["rps_min"] = min(r["rps"] for r in rr)
            s["rps_max"] = max(r["rps"] for r in rr)
            s["errors_total"] = sum(r.get("errors", 0) for r in rr)
            s["protocols"] = sorted({r["protocol"] for r in rr if r.get("protocol")})
            s["ciphers"] = sorted({c for r in rr for c in [cipher(d, sc, r["round"], lb)] if c})
            s["rps_per_core"] = 1e6 / s["cpu_us_per_req"] if s["cpu_us_per_req"] else None
            s["gen_cpu_busy_pct"] = med([r["cpu_busy_pct"].get(f"cpu{p['gen_cpu']}") for r in rr])
            summary[sc][lb] = s
        b = summary[sc].get(base)
        for s in summary[sc].values():
            s["rps_vs_" + base] = s["rps"] / b["rps"] if b and b["rps"] else None
            s["rps_per_core_vs_" + base] = (s["rps_per_core"] / b["rps_per_core"]
                                            if b and b["rps_per_core"] and s["rps_per_core"] else None)
        h2 = sc == "tls-h2"
        out.append("\n## " + TITLE[sc].format(conns=p["conns"], h2c=p["h2_conns"],
                                              h2m=p["h2_streams"]) + "\n")
        lat = "mean ms | max ms" if h2 else "p50 ms | p99 ms"
        out.append(f"| LB | rps | rps range | x{base} rps | {lat} | errors | LB CPU % | CPU us/req | "
                   f"rps/LB-core | x{base} per core | peak RSS MiB | upstream conns opened | "
                   f"CPU{p['gen_cpu']} busy % |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for lb, s in summary[sc].items():
            l1, l2 = ((fmt(s["lat_mean_ms"], 2), fmt(s["lat_max_ms"], 1)) if h2
                      else (fmt(s["p50_ms"], 2), fmt(s["p99_ms"], 2)))
            flag = ""
            if s["lb_cpu_util_pct"] is not None and s["lb_cpu_util_pct"] < 95:
                flag = " (not saturated)"
            if h2 and s["protocols"] != ["h2"]:
                flag += f" (protocol {'/'.join(s['protocols']) or '?'}!)"
            rss = s["lb_peak_rss_kb"] / 1024 if s["lb_peak_rss_kb"] else None
            out.append(
                f"| {lb} | {fmt(s['rps'])} | {fmt(s['rps_min'])}-{fmt(s['rps_max'])} | "
                f"{fmt(s['rps_vs_' + base], 2)} | {l1} | {l2} | {s['errors_total']} | "
                f"{fmt(s['lb_cpu_util_pct'])}{flag} | {fmt(s['cpu_us_per_req'], 1)} | "
                f"{fmt(s['rps_per_core'])} | {fmt(s['rps_per_core_vs_' + base], 2)} | "
                f"{fmt(rss, 1)} | {fmt(s['upstream_conns'])} | {fmt(s['gen_cpu_busy_pct'])} |")
        if h2:
            out.append("\nCipher suite per LB (from h2load; the server picks it): " + ", ".join(
                f"{lb} {'/'.join(s['ciphers']) or '?'}" for lb, s in summary[sc].items()))
    md = "\n".join(out) + "\n"
    open(os.path.join(d, "results.md"), "w").write(md)
    json.dump({"meta": meta, "summary": summary, "runs": runs},
              open(os.path.join(d, "results.json"), "w"), indent=1)
    sys.stdout.write(md)


if __name__ == "__main__":
    main()

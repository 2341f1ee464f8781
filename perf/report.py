#!/usr/bin/env python3
"""perf/report.py: the bookkeeping half of perf/run.sh.

    report.py record RESULTS KIND [--key value ...]   # append one JSON line
    report.py best RESULTS TARGET GEN                 # median best rate so far
    report.py table RESULTS [--append FILE]           # the Markdown table

RESULTS is a JSON-lines file, one measurement per line. Standard library
only.
"""

import json
import statistics
import sys


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def parse_opts(args):
    opts = {}
    i = 0
    while i < len(args):
        key = args[i].lstrip("-").replace("-", "_")
        vals = []
        i += 1
        while i < len(args) and not args[i].startswith("--"):
            vals.append(args[i])
            i += 1
        opts[key] = vals[0] if len(vals) == 1 else vals
    return opts


def latency(uac, what="invite_to_200"):
    lat = (uac.get("latency_ms") or {}).get(what) or {}
    return lat.get("p50"), lat.get("p99"), lat.get("count", 0)


def cpu_per_call(ticks, hz, calls):
    t = [int(x) for x in ticks.split()]
    if len(t) != 4 or not calls:
        return None, None
    per_tick_us = 1e6 / float(hz)
    return (t[2] - t[0]) * per_tick_us / calls, (t[3] - t[1]) * per_tick_us / calls


def delta(pair):
    """ "a b" -> b - a (or None)."""
    try:
        a, b = (int(x) for x in pair.split())
        return b - a
    except (AttributeError, ValueError):
        return None


def split(before, after):
    """Per-worker share of the CPU from "name:ticks ..." before and after."""
    def parse(s):
        return dict(x.rsplit(":", 1) for x in s.split() if ":" in x)

    b, a = parse(before), parse(after)
    d = {k: int(a[k]) - int(b.get(k, 0)) for k in sorted(a)}
    total = sum(d.values())
    if len(d) < 2 or total <= 0:
        return None
    return " / ".join(f"{v * 100 // total}" for v in d.values())


def counters(path):
    return load_json(path).get("result") or {}


def record(results, kind, args):
    o = parse_opts(args)
    rec = {"kind": kind}
    verdict = None
    if kind == "meta":
        rec.update(o)
    elif kind == "floor":
        f = load_json(o["file"])
        rec.update(rep=int(o["rep"]), us_per_datagram=f.get("cpu_us_per_datagram"))
    elif kind == "fwd":
        f = load_json(o["file"])
        rec.update(
            rep=int(o["rep"]),
            rate=int(o["rate"]),
            datagrams_per_s=f.get("forwarded_per_s"),
            us_per_datagram=f.get("cpu_us_per_datagram"),
        )
    elif kind == "direct":
        u = load_json(o["uac"])
        p50, p99, _ = latency(u)
        rec.update(
            rate=int(o["rate"]),
            rep=int(o["rep"]),
            p50=p50,
            p99=p99,
            success=u.get("calls_succeeded", 0) / max(1, u.get("calls_attempted", 0)) * 100,
        )
    elif kind == "fixed":
        u = load_json(o["uac"])
        calls = u.get("calls_attempted", 0)
        user, system = cpu_per_call(o["ticks"], o["hz"], calls)
        p50, p99, _ = latency(u)
        rec.update(
            target=o["target"],
            rate=int(o["rate"]),
            rep=int(o["rep"]),
            calls=calls,
            achieved=u.get("achieved_cps"),
            success=u.get("calls_succeeded", 0) / max(1, calls) * 100,
            failures=u.get("failures_by_reason"),
            user_us=user,
            sys_us=system,
            total_us=None if user is None else user + system,
            p50=p50,
            p99=p99,
            drops=delta(o.get("drops")),
            switches_per_call=None if delta(o.get("switches")) is None or not calls
            else delta(o.get("switches")) / calls,
            rss_mib=int(o.get("rss") or 0) / 1024,
        )
        th = o.get("threads")
        if isinstance(th, list) and len(th) == 2:
            rec["worker_split"] = split(th[0], th[1])
        s0, s1 = counters(o["stats"][0]), counters(o["stats"][1])
        if s1 and calls:
            d = {k: s1.get(k, 0) - s0.get(k, 0) for k in s1}
            rx = d.get("siplb:rx_requests", 0) + d.get("siplb:rx_responses", 0)
            # 100 Trying is not counted by siplb: one per INVITE the UAC saw answered with it
            trying = latency(u, "invite_to_100")[2]
            tx = (
                d.get("siplb:relayed_requests", 0)
                + d.get("siplb:relayed_responses", 0)
                + d.get("siplb:local_replies", 0)
                + d.get("siplb:retransmissions", 0)
                + trying
            )
            rec.update(rx_per_call=rx / calls, tx_per_call=tx / calls, handoffs=d.get("siplb:handoffs", 0))
    elif kind == "ramp":
        best = o.get("best")
        if best is None:
            best = load_json(o["file"]).get("best_rate")
        rec.update(target=o["target"], rep=int(o["rep"]), gen=o["gen"], best=float(best or 0))
    elif kind == "sipp-step":
        rate, secs = int(o["rate"]), float(o["secs"])
        row = {}
        try:
            with open(o["file"]) as f:
                lines = [line.rstrip("\n") for line in f if line.strip()]
            head = lines[0].split(";")
            row = dict(zip(head, lines[-1].split(";")))
        except (OSError, IndexError):
            pass
        ok = int(row.get("SuccessfulCall(C)", 0) or 0)
        failed = int(row.get("FailedCall(C)", 0) or 0)
        cps = float(row.get("CallRate(C)", 0) or 0)
        expected = int(rate * secs)
        passed = ok >= 0.999 * expected and cps >= 0.95 * rate
        rec.update(
            target=o["target"], rep=int(o["rep"]), rate=rate, succeeded=ok, failed=failed, cps=cps, passed=passed
        )
        verdict = "pass" if passed else "fail"
    elif kind == "profile":
        try:
            with open(o["file"]) as f:
                top = [line.rstrip() for line in f if line.strip()]
        except OSError:
            top = []
        rec.update(target=o["target"], rate=int(o["rate"]), top=top)
    elif kind == "overload":
        u = load_json(o["uac"])
        secs = float(o["secs"])
        attempted = u.get("calls_attempted", 0)
        succeeded = u.get("calls_succeeded", 0)
        reasons = u.get("failures_by_reason") or {}
        rejected = sum(v for k, v in reasons.items() if k.endswith("503"))
        admitted = attempted - rejected
        user, system = cpu_per_call(o["ticks"], o["hz"], attempted)
        p50, p99, _ = latency(u)
        rec.update(
            target=o["target"],
            rep=int(o["rep"]),
            offered=int(o["offered"]),
            sustainable=float(o["sustainable"]),
            capacity=int(o["capacity"]),
            achieved=u.get("achieved_cps"),
            admitted_cps=admitted / secs,
            rejected_cps=rejected / secs,
            admitted_success=succeeded / admitted * 100 if admitted else 0.0,
            other_failures={k: v for k, v in reasons.items() if not k.endswith("503")},
            p50=p50,
            p99=p99,
            cpu_us=None if user is None else user + system,
            drops=delta(o.get("drops")),
        )
    else:
        sys.exit(f"report.py: unknown kind {kind}")
    with open(results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    if verdict:
        print(verdict)


def read(results):
    out = []
    with open(results) as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return out


def values(recs, key, **match):
    return [r[key] for r in recs if all(r.get(k) == v for k, v in match.items()) and r.get(key) is not None]


def med(xs):
    return statistics.median(xs) if xs else None


def spread(xs, fmt="{:.1f}"):
    """median (min-max) over repetitions."""
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def best(results, target, gen):
    xs = values(read(results), "best", kind="ramp", target=target, gen=gen)
    print(int(med(xs) or 0))


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(results, append=None):
    recs = read(results)
    meta = {}
    for r in recs:
        if r["kind"] == "meta":
            meta.update({k: v for k, v in r.items() if k != "kind"})
    targets = []
    for r in recs:
        t = r.get("target")
        if t and t not in targets:
            targets.append(t)
    rates = sorted({r["rate"] for r in recs if r["kind"] == "fixed"})
    out = []
    w = out.append
    w(f"## End to end: siplb vs the floor vs Kamailio ({meta.get('mode', '?')} run)")
    w("")
    w(
        f"{meta.get('date', '?')}, commit `{meta.get('commit', '?')}`, {meta.get('machine', '?')}; "
        f"{meta.get('kamailio', 'no kamailio')}, {meta.get('sipp', 'no SIPp')}. "
        f"Load average (1/5/15 min) {meta.get('load_start', '?')} at the start, "
        f"{meta.get('load_end', '?')} at the end; {meta.get('reps', '?')} repetition(s), "
        f"{meta.get('elapsed', '?')} s. Figures are median (min–max) over the repetitions."
    )
    w("")
    w("```sh")
    w(meta.get("command", "perf/run.sh").strip())
    w("```")
    w("")
    w(
        "Setup: loopback, `sipload uac` (2 threads, two source ports) and two `sipload uas --no-trying` backends (1 thread each) "
        "pinned to core 1; siplb-1w = 1 worker pinned to core 0, siplb-2w = 2 workers on cores 0 and 1; "
        "kamailio-1c = Kamailio (2 children, tlsf, -m 2048, dispatcher alg 10) under `taskset -c 0`, "
        "kamailio-2c = the same on both cores. Calls: INVITE (with SDP) → 100 (from the proxy) → 180 → 200 → "
        "ACK → BYE → 200, no hold. CPU is the proxy process's utime/stime from /proc/PID/stat "
        "(all threads, all Kamailio processes) over a fixed-rate run, divided by the calls; context switches "
        "from /proc/PID/task/*/status the same way; RSS at the end of the run (Kamailio: the sum over its "
        "processes, which counts the shared memory each one touched once per process)."
    )
    w("")

    # CPU per call at fixed rates
    w("### CPU per call at fixed offered rates (sipload)")
    w("")
    w(
        "| target | offered calls/s | success % | user µs/call | system µs/call | total µs/call "
        "| p50 / p99 INVITE→200 ms | minus direct path (p50 / p99) | datagrams in+out per call "
        "| context switches per call | RSS MiB | UDP drops (whole machine) | CPU % per worker |"
    )
    w("|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|")
    for rate in rates:
        d50 = med(values(recs, "p50", kind="direct", rate=rate))
        d99 = med(values(recs, "p99", kind="direct", rate=rate))
        if d50 is not None:
            w(
                f"| direct (no proxy) | {rate} | {spread(values(recs, 'success', kind='direct', rate=rate), '{:.2f}')} "
                f"| | | | {spread(values(recs, 'p50', kind='direct', rate=rate), '{:.2f}')} / "
                f"{spread(values(recs, 'p99', kind='direct', rate=rate), '{:.2f}')} | | | | | | |"
            )
        for t in targets:
            m = dict(kind="fixed", target=t, rate=rate)
            if not values(recs, "calls", **m):
                continue
            p50s, p99s = values(recs, "p50", **m), values(recs, "p99", **m)
            minus = "n/a"
            if d50 is not None and p50s:
                minus = f"{med(p50s) - d50:+.2f} / {med(p99s) - d99:+.2f}"
            dg = [a + b for a, b in zip(values(recs, "rx_per_call", **m), values(recs, "tx_per_call", **m))]
            w(
                f"| {t} | {rate} | {spread(values(recs, 'success', **m), '{:.2f}')} "
                f"| {spread(values(recs, 'user_us', **m))} | {spread(values(recs, 'sys_us', **m))} "
                f"| {spread(values(recs, 'total_us', **m))} "
                f"| {spread(p50s, '{:.2f}')} / {spread(p99s, '{:.2f}')} | {minus} "
                f"| {spread(dg, '{:.2f}') if dg else '—'} "
                f"| {spread(values(recs, 'switches_per_call', **m), '{:.2f}')} "
                f"| {spread(values(recs, 'rss_mib', **m), '{:.0f}')} "
                f"| {spread(values(recs, 'drops', **m), '{:.0f}')} "
                f"| {', '.join(values(recs, 'worker_split', **m)) or '—'} |"
            )
    w("")

    # floor
    floor_pp = values(recs, "us_per_datagram", kind="floor")
    dg_all = [
        a + b
        for a, b in zip(values(recs, "rx_per_call", kind="fixed"), values(recs, "tx_per_call", kind="fixed"))
    ]
    dg = med(dg_all) or 13.0
    w("### The floor")
    w("")
    w(
        f"A datagram received and sent costs the figures below; siplb handles {dg:.2f} datagrams per call "
        f"(received + sent, from its counters; the 100 Trying it sends is counted from the caller's side), "
        f"i.e. {dg / 2:.2f} datagrams forwarded."
    )
    w("")
    w("| floor | µs per datagram (recv + send) | µs per call | siplb-1w total µs/call | siplb / floor |")
    w("|---|---:|---:|---:|---:|")
    floor_per_call = {}
    s1 = {rate: med(values(recs, "total_us", kind="fixed", target="siplb-1w", rate=rate)) for rate in rates}
    if floor_pp:
        pc = med(floor_pp) * dg / 2
        w(
            f"| `sipload floor` (2 threads ping-pong, window 32, saturated) | {spread(floor_pp, '{:.2f}')} "
            f"| {pc:.1f} | | |"
        )
    for rate in rates:
        xs = values(recs, "us_per_datagram", kind="fwd", rate=rate)
        if not xs:
            continue
        pc = med(xs) * dg / 2
        floor_per_call[rate] = pc
        r = ratio(s1.get(rate), pc)
        w(
            f"| perf/fwd.c forwarder at {rate * 13 // 2} datagrams/s (= {rate} calls/s) | {spread(xs, '{:.2f}')} "
            f"| {pc:.1f} | {s1.get(rate) or 0:.1f} | {'n/a' if r is None else f'{r:.2f}x'} |"
        )
    w("")

    # capacity
    w("### Calls/s at ≥ 99.9 % success")
    w("")
    w("| target | sipload (`sipload ramp`, p99 INVITE→200 ≤ 200 ms) | SIPp (steps of SIPp uac.xml, SIPp backends) |")
    w("|---|---:|---:|")
    for t in targets:
        a = values(recs, "best", kind="ramp", target=t, gen="sipload")
        b = values(recs, "best", kind="ramp", target=t, gen="sipp")
        if a or b:
            if t == "direct":
                t = "direct (no proxy: what the generators sustain)"
            w(f"| {t} | {spread(a, '{:.0f}')} | {spread(b, '{:.0f}') if b else '—'} |")
    w("")

    # overload
    ov = [r for r in recs if r["kind"] == "overload"]
    if ov:
        w("### Overload: offered twice the sustainable rate")
        w("")
        w(
            "Capacities (siplb `pstn=`, Kamailio `maxload`) sized so that the concurrent calls at the "
            "sustainable rate fit (rate × hold); calls hold for the time given; the caller counts a 503 as "
            "rejected and everything else that fails as a failed admitted call."
        )
        w("")
        w(
            "| target | offered calls/s | admitted calls/s | rejected (503) calls/s | admitted calls that "
            "succeeded % | p50 / p99 INVITE→200 of admitted, ms | other failures | proxy CPU µs per offered call "
            "| UDP drops (whole machine) |"
        )
        w("|---|---:|---:|---:|---:|---|---|---:|---:|")
        for t in targets:
            m = dict(kind="overload", target=t)
            if not values(recs, "offered", **m):
                continue
            others = {}
            for r in ov:
                if r["target"] == t:
                    for k, v in (r.get("other_failures") or {}).items():
                        others[k] = others.get(k, 0) + v
            w(
                f"| {t} | {spread(values(recs, 'offered', **m), '{:.0f}')} "
                f"(placed {spread(values(recs, 'achieved', **m), '{:.0f}')}) "
                f"| {spread(values(recs, 'admitted_cps', **m), '{:.0f}')} "
                f"| {spread(values(recs, 'rejected_cps', **m), '{:.0f}')} "
                f"| {spread(values(recs, 'admitted_success', **m), '{:.2f}')} "
                f"| {spread(values(recs, 'p50', **m), '{:.2f}')} / {spread(values(recs, 'p99', **m), '{:.2f}')} "
                f"| {', '.join(f'{k} {v}' for k, v in sorted(others.items())) or 'none'} "
                f"| {spread(values(recs, 'cpu_us', **m))} | {spread(values(recs, 'drops', **m), '{:.0f}')} |"
            )
        w("")

    for r in recs:
        if r["kind"] == "profile" and r.get("top"):
            w(f"### Where {r['target']}'s CPU goes at {r['rate']} calls/s (`perf record -g`, flat, top 25)")
            w("")
            w("```")
            w("\n".join(r["top"]))
            w("```")
            w("")

    # targets of issue 6
    w("### Against the targets of issue 6 (medians)")
    w("")
    w("| target | measured | met? |")
    w("|---|---|---|")

    def fmt_check(name, value, limit, good_when_le=True, unit="x"):
        if value is None:
            w(f"| {name} | n/a | n/a |")
            return
        ok = value <= limit if good_when_le else value >= limit
        w(f"| {name} | {value:.2f}{unit} | {'yes' if ok else '**no**'} |")

    def fixed_med(t, rate, key):
        return med(values(recs, key, kind="fixed", target=t, rate=rate))

    for rate in rates:
        for s, k in (("siplb-1w", "kamailio-1c"), ("siplb-2w", "kamailio-2c")):
            fmt_check(
                f"total CPU/call {s} ÷ {k} at {rate}/s ≤ 1/3",
                ratio(fixed_med(s, rate, "total_us"), fixed_med(k, rate, "total_us")),
                1 / 3,
            )
            fmt_check(
                f"user CPU/call {s} ÷ {k} at {rate}/s ≤ 1/10",
                ratio(fixed_med(s, rate, "user_us"), fixed_med(k, rate, "user_us")),
                0.1,
            )
        if rate in floor_per_call:
            fmt_check(
                f"siplb-1w total CPU/call ÷ floor (fwd.c) at {rate}/s ≤ 1.3",
                ratio(fixed_med("siplb-1w", rate, "total_us"), floor_per_call[rate]),
                1.3,
            )
        if floor_pp:
            fmt_check(
                f"siplb-1w total CPU/call ÷ floor (`sipload floor`, saturated) at {rate}/s ≤ 1.3",
                ratio(fixed_med("siplb-1w", rate, "total_us"), med(floor_pp) * dg / 2),
                1.3,
            )
        fmt_check(
            f"CPU/call siplb-2w ÷ siplb-1w at {rate}/s ≤ 1.10",
            ratio(fixed_med("siplb-2w", rate, "total_us"), fixed_med("siplb-1w", rate, "total_us")),
            1.1,
        )

    def best_of(prefix, gen):
        xs = [
            med(values(recs, "best", kind="ramp", target=t, gen=gen)) for t in targets if t.startswith(prefix)
        ]
        xs = [x for x in xs if x]
        return max(xs) if xs else None

    fmt_check(
        "calls/s siplb best ÷ Kamailio best (sipload) ≥ 2.5",
        ratio(best_of("siplb", "sipload"), best_of("kamailio", "sipload")),
        2.5,
        good_when_le=False,
    )
    fmt_check(
        "calls/s siplb ÷ Kamailio (SIPp) ≥ 1.7",
        ratio(best_of("siplb", "sipp"), best_of("kamailio", "sipp")),
        1.7,
        good_when_le=False,
    )
    for t in targets:
        xs = values(recs, "admitted_success", kind="overload", target=t)
        if t.startswith("siplb") and xs:
            fmt_check(f"overload {t}: admitted calls that succeed ≥ 99.9 %", min(xs), 99.9, False, " %")
    w("")
    for gen in ("sipload", "sipp"):
        ceiling = med(values(recs, "best", kind="ramp", target="direct", gen=gen))
        k = best_of("kamailio", gen)
        if ceiling and k:
            w(
                f"With {gen} driving, the generators alone (no proxy, same cores) sustain {ceiling:.0f} calls/s: "
                f"the largest siplb ÷ Kamailio ratio this machine can show with {gen} is {ceiling / k:.2f}x."
            )
            w("")
    text = "\n".join(out) + "\n"
    print(text)
    if append:
        with open(append, "a") as f:
            f.write("\n" + text)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd, results = sys.argv[1], sys.argv[2]
    if cmd == "record":
        record(results, sys.argv[3], sys.argv[4:])
    elif cmd == "best":
        best(results, sys.argv[3], sys.argv[4])
    elif cmd == "table":
        o = parse_opts(sys.argv[3:])
        table(results, o.get("append"))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

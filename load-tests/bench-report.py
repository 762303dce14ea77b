#!/usr/bin/env python3
"""Markdown report of one `load-tests/bench.sh` run.

    python3 load-tests/bench-report.py load-tests/reports/<date>-<commit> > load-tests/reports/<date>-<commit>.md

Reads the raw directory the script wrote (machine.json, conditions.json, parts.jsonl,
redis-benchmark.csv, knee-<scenario>.json, flaky.json, compare.json) and prints the report on
stdout. Every part may be missing or failed: the report says so and goes on. Standard library
only (Python 3.11).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

# What each scenario's rate counts, its target, and how many durable Redis writes one unit
# costs (the divisor of redis-benchmark's SET/s for the durable-write limit).
SCENARIOS = [
    {
        "name": "lifecycle",
        "unit": "lifecycles/s",
        "target": 10_000,
        "writes": 5,
        "writes_why": "place, payment attempt, payment result, ship, deliver: a charge is only "
        "requested once its attempt is durable",
    },
    {
        "name": "bulk-ingest",
        "unit": "orders/s",
        "target": 100_000,
        "writes": 1,
        "writes_why": "the placement snapshot, its outbox event in the same transaction",
    },
    {
        "name": "stream-ingest",
        "unit": "orders/s",
        "target": 100_000,
        "writes": 3,
        "writes_why": "the client's XADD to the ingest stream, the placement snapshot with its "
        "outbox event, the server's XACK",
    },
]

RESULTS_BEGIN = "<!-- results:begin -->"
RESULTS_END = "<!-- results:end -->"


def load_json(path: Path):
    try:
        with path.open() as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt_int(x) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}"


def fmt_ms(x) -> str:
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f} ms"
    if x >= 10:
        return f"{x:.1f} ms"
    return f"{x:.2f} ms"


def fmt_pct(x) -> str:
    if x is None:
        return "—"
    return f"{x * 100:.2f}%"


def md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def read_parts(raw: Path) -> dict[str, dict]:
    parts: dict[str, dict] = {}
    try:
        lines = (raw / "parts.jsonl").read_text().splitlines()
    except OSError:
        return parts
    for line in lines:
        try:
            p = json.loads(line)
        except ValueError:
            continue
        parts[p.get("part", "?")] = p
    return parts


def part_note(parts: dict, name: str) -> str | None:
    """None when the part ran fine, else a short reason."""
    p = parts.get(name)
    if p is None:
        return "not run (no record of it)"
    if p.get("status") == "ok":
        return None
    reason = p.get("reason")
    return f"{p.get('status')}: {reason}" if reason else str(p.get("status"))


def redis_benchmark_set(raw: Path) -> float | None:
    """SET requests per second from `redis-benchmark --csv` (or -q) output."""
    path = raw / "redis-benchmark.csv"
    try:
        text = path.read_text()
    except OSError:
        return None
    rows = list(csv.reader(text.splitlines()))
    header = None
    for row in rows:
        if not row:
            continue
        if row[0] == "test":
            header = row
            continue
        if row[0].upper().startswith("SET"):
            col = header.index("rps") if header and "rps" in header else 1
            try:
                return float(row[col])
            except (ValueError, IndexError):
                return None
    # -q format: "SET: 512345.67 requests per second, ..."
    for line in text.splitlines():
        if line.startswith("SET:"):
            try:
                return float(line.split()[1])
            except (ValueError, IndexError):
                return None
    return None


def redis_config(raw: Path) -> str | None:
    try:
        lines = [l.strip() for l in (raw / "redis-config.txt").read_text().splitlines() if l.strip()]
    except OSError:
        return None
    # `config get` prints name and value on two lines.
    out, i = [], 0
    while i < len(lines):
        if ":" in lines[i]:
            out.append(lines[i].replace(":", " "))
            i += 1
        elif i + 1 < len(lines):
            out.append(f"{lines[i]} {lines[i + 1]}")
            i += 2
        else:
            out.append(lines[i])
            i += 1
    return ", ".join(f"`{o}`" for o in out)


def failure_text(step: dict, bound: float | None) -> str:
    bits = []
    for f in step.get("failures") or []:
        if f == "p99":
            bits.append(f"p99 {fmt_ms(step.get('p99_ms'))} > {bound:g} ms" if bound else "p99")
        elif f == "errors":
            bits.append(f"errors {fmt_pct(step.get('error_rate'))} ({fmt_int(step.get('errors'))})")
        elif f == "dropped":
            bits.append(f"{fmt_int(step.get('dropped'))} dropped")
        elif f == "unfinished":
            bits.append(f"{fmt_int(step.get('unfinished'))} unfinished")
        elif f == "no_answers":
            bits.append("no answers")
        else:
            bits.append(str(f))
    return ", ".join(bits) or "failed"


class Knee:
    """One scenario's knee search, with rates converted to the scenario's unit."""

    def __init__(self, spec: dict, report: dict | None, factor: int):
        self.spec = spec
        self.report = report
        self.factor = factor  # units per arrival (bulk: lines per request)

    def unit_rate(self, arrivals):
        return None if arrivals is None else arrivals * self.factor

    def step_at(self, rate):
        for s in (self.report or {}).get("steps") or []:
            if s.get("rate_per_sec") == rate:
                return s
        return None

    @property
    def sustainable(self):
        return (self.report or {}).get("sustainable_rate_per_sec")

    @property
    def lower_bound(self) -> bool:
        return (self.report or {}).get("stopped_because") == "bounds"

    def knee_text(self) -> str:
        r = self.report or {}
        kr = r.get("knee_rate_per_sec")
        if kr is None:
            steps = r.get("steps") or []
            last = steps[-1]["rate_per_sec"] if steps else None
            return f"none up to {fmt_int(self.unit_rate(last))}/s (search bounds reached)"
        step = self.step_at(kr) or {}
        return f"{fmt_int(self.unit_rate(kr))}/s: {failure_text(step, r.get('p99_bound_ms'))}"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    raw = Path(sys.argv[1])
    name = raw.name
    machine = load_json(raw / "machine.json") or {}
    cond = load_json(raw / "conditions.json") or {}
    parts = read_parts(raw)
    quick = bool(cond.get("quick")) or name.endswith("-quick")
    p99_bound = cond.get("p99_ms", 50)
    step_duration = cond.get("step_duration", "10s")
    bulk_lines = int(cond.get("bulk_lines") or 1000)
    set_per_s = redis_benchmark_set(raw)
    compare = load_json(raw / "compare.json")
    baseline = (compare or {}).get("baseline_lifecycles_per_s")

    out: list[str] = []
    w = out.append
    date = machine.get("date_utc", "?")
    commit = machine.get("commit", "?")
    meta = {
        "name": name,
        "date_utc": date,
        "commit": commit,
        "quick": quick,
        "cores": machine.get("cores"),
        "mem_total_kib": machine.get("mem_total_kib"),
        "redis_version": machine.get("redis_version"),
        "p99_ms": p99_bound,
        "step_duration": step_duration,
    }
    w(f"<!-- bench-meta: {json.dumps(meta)} -->")
    title = f"# Orderly benchmark {date[:10]}, commit `{commit}`"
    if quick:
        title += " (quick check)"
    w(title)
    w("")
    if quick:
        w("**A quick run (`BENCH_QUICK=1`): a few short steps to check the script, not a "
          "measurement.**")
        w("")
    w(f"Written by `load-tests/bench.sh` at {date}"
      + (f", finished {(raw / 'finished_utc.txt').read_text().strip()}" if (raw / "finished_utc.txt").exists() else "")
      + f". Raw outputs: [`{name}/`]({name}/).")
    w("")

    # -- machine
    w("## Machine")
    w("")
    mem = machine.get("mem_total_kib")
    w("| | |")
    w("|---|---|")
    w(f"| cores | {machine.get('cores', '?')} |")
    w(f"| memory | {mem / 1024 / 1024:.1f} GiB |" if mem else "| memory | ? |")
    w(f"| kernel | {md_escape(machine.get('kernel', '?'))} |")
    w(f"| CPU | {md_escape(machine.get('cpu_model', '?'))} |")
    w(f"| Redis | {md_escape(machine.get('redis_version', '?'))} |")
    w(f"| rustc | {md_escape(machine.get('rustc', '?'))} |")
    dirty = " (working tree with uncommitted changes)" if machine.get("dirty") else ""
    w(f"| commit | `{machine.get('commit_full', commit)}`{dirty} |")
    w("")

    # -- conditions
    cores = machine.get("cores", "?")
    w("## Conditions")
    w("")
    w(f"- {cores} cores shared by the load generator (`orderly-load`), the server (`orderly "
      "serve`) and Redis, all on this machine; nothing else should run meanwhile.")
    rc = redis_config(raw)
    w("- Redis on loopback, a fresh `redis-server` per part (own temp dir, `--appendonly yes "
      "--appendfsync everysec --save ''`)" + (f"; checked: {rc}" if rc else "") + ".")
    w("- Release build (`cargo build --release --workspace`); a fresh `orderly serve --store "
      "redis://…` per part with the embedded defaults, plus `ORDERLY__INGEST__ENABLED=true` for "
      "stream-ingest and every payment method routed to the `http` gateway at `mock_payments "
      "--fault-profile flaky` for flaky-gateways.")
    w(f"- Knee search (`orderly-load knee`): open-model steps of {step_duration} each; a step "
      f"passes when the p99 of the whole flow is at most {p99_bound:g} ms, at most 1% of the "
      "requests fail and no arrival is dropped or left unfinished. The sustainable rate is the "
      "last passing step.")
    knees_cond = cond.get("knee") or {}
    if knees_cond:
        w("")
        w("| scenario | start | step | most steps |")
        w("|---|---|---|---|")
        for spec in SCENARIOS:
            k = knees_cond.get(spec["name"])
            if k:
                w(f"| {spec['name']} | {fmt_int(k.get('start'))}/s | +{fmt_int(k.get('step'))}/s "
                  f"| {k.get('max_steps')} |")
        w("")
    if cond.get("orderly_env"):
        env = ", ".join(f"`{k}={v}`" for k, v in sorted(cond["orderly_env"].items()))
        w(f"- Set in the environment of the run (applies to every server): {env}.")
    w("")

    # -- parts
    bad = [(p, part_note(parts, p)) for p in
           ["redis-benchmark", "lifecycle", "bulk-ingest", "stream-ingest", "flaky-gateways", "soak",
            "compare"]]
    bad = [(p, n) for p, n in bad if n]
    if bad:
        w("## Parts that did not run or failed")
        w("")
        w("| part | status |")
        w("|---|---|")
        for p, n in bad:
            w(f"| {p} | {md_escape(n)} |")
        w("")

    # -- results
    knees = {}
    for spec in SCENARIOS:
        factor = bulk_lines if spec["name"] == "bulk-ingest" else 1
        knees[spec["name"]] = Knee(spec, load_json(raw / f"knee-{spec['name']}.json"), factor)

    w("## Results")
    w("")
    w(RESULTS_BEGIN)
    w("| scenario | sustainable rate | unit | p99 at that rate | knee (first failing rate: why) | target | limit, same machine and run |")
    w("|---|---|---|---|---|---|---|")
    for spec in SCENARIOS:
        k = knees[spec["name"]]
        unit = spec["unit"]
        if spec["name"] == "bulk-ingest":
            unit = f"orders/s (bulk arrivals/s × {bulk_lines:,} lines)"
        limit_bits = []
        if set_per_s:
            per = set_per_s / spec["writes"]
            limit_bits.append(
                f"durable writes: redis-benchmark -P 64 -t set: {fmt_int(set_per_s)} SET/s "
                f"÷ {spec['writes']} write{'s' if spec['writes'] > 1 else ''} per "
                f"{'lifecycle' if spec['name'] == 'lifecycle' else 'order'} = {fmt_int(per)} {spec['unit']}")
        else:
            limit_bits.append("durable writes: redis-benchmark not available")
        if spec["name"] == "lifecycle":
            if baseline:
                limit_bits.append(f"engine: baseline (naive-actix, compare.sh) {fmt_int(baseline)} lifecycles/s")
            else:
                limit_bits.append("engine: baseline not measured (compare.sh "
                                  + ((parts.get("compare") or {}).get("status") or "not run") + ")")
        limit = "; ".join(limit_bits)
        target = f"{fmt_int(spec['target'])} {spec['unit']}"
        if k.report is None:
            note = part_note(parts, spec["name"]) or "no knee report"
            w(f"| {spec['name']} | — | {unit} | — | {md_escape(note)} | {target} | {limit} |")
            continue
        sus = k.sustainable
        if sus is None:
            w(f"| {spec['name']} | none (first step failed) | {unit} | — | {md_escape(k.knee_text())} "
              f"| {target} | {limit} |")
            continue
        step = k.step_at(sus) or {}
        rate = fmt_int(k.unit_rate(sus))
        if k.lower_bound:
            rate = "≥ " + rate
        if spec["name"] == "bulk-ingest":
            rate += f" ({fmt_int(sus)} × {bulk_lines:,})"
        w(f"| {spec['name']} | **{rate}** | {unit} | {fmt_ms(step.get('p99_ms'))} | "
          f"{md_escape(k.knee_text())} | {target} | {limit} |")
    w(RESULTS_END)
    w("")
    w("Durable writes per unit (the divisor of redis-benchmark's SET/s): "
      + "; ".join(f"{s['name']} {s['writes']} ({s['writes_why']})" for s in SCENARIOS)
      + ". Orderly batches its writes (one fenced `MULTI`/`EXEC` per commit group), so the "
      "divided figure is an order of magnitude for what Redis can make durable on this machine, "
      "not a hard ceiling.")
    w("")

    # -- knee tables
    w("## Knee searches")
    for spec in SCENARIOS:
        k = knees[spec["name"]]
        w("")
        w(f"### {spec['name']}")
        w("")
        if k.report is None:
            w(f"No report: {md_escape(part_note(parts, spec['name']) or 'missing knee-' + spec['name'] + '.json')}.")
            continue
        r = k.report
        per = "" if k.factor == 1 else f" (arrivals/s; × {k.factor:,} = orders/s)"
        w(f"Latency judged: `{r.get('latency_kind', '?')}`; p99 bound {r.get('p99_bound_ms', p99_bound):g} ms; "
          f"error rate at most {fmt_pct(r.get('error_rate_max'))}; {r.get('step_duration_s', '?'):g} s per step; "
          f"stopped: {r.get('stopped_because', '?')}.")
        w("")
        w(f"| rate/s{per} | achieved/s | ok requests/s | p50 | p99 | errors | dropped | unfinished | verdict |")
        w("|---|---|---|---|---|---|---|---|---|")
        for s in r.get("steps") or []:
            verdict = s.get("verdict", "?")
            if verdict != "pass":
                verdict = f"fail ({failure_text(s, r.get('p99_bound_ms'))})"
            w(f"| {fmt_int(s.get('rate_per_sec'))} | {s.get('achieved_rate_per_sec', 0):,.1f} | "
              f"{s.get('ok_per_sec', 0):,.1f} | {fmt_ms(s.get('p50_ms'))} | {fmt_ms(s.get('p99_ms'))} | "
              f"{fmt_int(s.get('errors'))} ({fmt_pct(s.get('error_rate'))}) | {fmt_int(s.get('dropped'))} | "
              f"{fmt_int(s.get('unfinished'))} | {md_escape(verdict)} |")
        svg = raw / f"knee-{spec['name']}.svg"
        if svg.exists():
            w("")
            w(f"![{spec['name']}: achieved rate and p99 per step]({name}/knee-{spec['name']}.svg)")

    # -- flaky gateways
    w("")
    w("## flaky-gateways")
    w("")
    flaky = load_json(raw / "flaky.json")
    if flaky is None:
        w(f"No report: {md_escape(part_note(parts, 'flaky-gateways') or 'missing flaky.json')}.")
    else:
        fc = cond.get("flaky") or {}
        lat = flaky.get("latency_ms") or {}
        pay = flaky.get("payments") or {}
        server = flaky.get("server") or {}
        errors = flaky.get("errors") or {}
        dc = pay.get("double_charges")
        w(f"`orderly-load run --scenario flaky-gateways --rate {fc.get('rate', '?')} --duration "
          f"{fc.get('duration', '?')} --mock-payments …`: place and pay through the `http` gateway "
          "while the mock hangs charges, answers 5xx, throttles and declines.")
        w("")
        w("| | |")
        w("|---|---|")
        w(f"| arrivals scheduled / started / dropped / unfinished | {fmt_int(flaky.get('scheduled'))} / "
          f"{fmt_int(flaky.get('started'))} / {fmt_int(flaky.get('dropped'))} / {fmt_int(flaky.get('unfinished'))} |")
        w(f"| requests ok / failed | {fmt_int(flaky.get('ok'))} / {fmt_int(flaky.get('error_count'))} |")
        if errors:
            w("| failures by code | " + md_escape(", ".join(f"{k}: {fmt_int(v)}" for k, v in sorted(errors.items()))) + " |")
        for kind in ("flow", "place", "pay"):
            if kind in lat:
                l = lat[kind]
                w(f"| p50 / p99 / max `{kind}` | {fmt_ms(l.get('p50'))} / {fmt_ms(l.get('p99'))} / {fmt_ms(l.get('max'))} |")
        if pay:
            w(f"| charges (keys charged at the mock) | {fmt_int(pay.get('charges'))} |")
            w(f"| duplicates_refused (repeated keys answered from the record) | {fmt_int(pay.get('duplicates_refused'))} |")
            verdict = "(must be 0)" if dc == 0 else "**NOT 0: a double charge**"
            w(f"| double_charges | **{fmt_int(dc)}** {verdict} |")
        else:
            w("| payments | no `payments` section (mock counters not read) |")
        if server.get("payment_retries") is not None:
            w(f"| server payment retries | {fmt_int(server.get('payment_retries'))} |")
        if server.get("orders_placed") is not None:
            w(f"| server orders placed | {fmt_int(server.get('orders_placed'))} |")

    # -- soak
    soak = load_json(raw / "soak.json")
    if soak is not None or "soak" in (cond.get("parts") or []):
        w("")
        w("## soak")
        w("")
    if soak is None and "soak" in (cond.get("parts") or []):
        w(f"No report: {md_escape(part_note(parts, 'soak') or 'missing soak.json')}.")
    elif soak is not None:
        sc = cond.get("soak") or {}
        samples = [x for x in soak.get("samples") or [] if x.get("rss_bytes") is not None]
        lat = (soak.get("latency_ms") or {}).get("flow") or {}
        stages = soak.get("stages") or []
        rate = stages[0].get("rate_per_sec") if stages else soak.get("target_rate_per_sec")
        w(f"`orderly-load run --scenario soak` against `orderly serve` with "
          f"`ORDERLY__ENGINE__IDLE_TIMEOUT_MS={sc.get('idle_timeout_ms', '?')}` and "
          f"`ORDERLY__PAYMENTS__SIMULATED_LEDGER_RETENTION_MS={sc.get('ledger_retention_ms', '?')}` "
          f"(memory windows shorter than the soak): {fmt_int(rate)} lifecycles/s, the server's RSS "
          "and the client's p99 sampled at each of the scenario's `sample_interval`.")
        w("")
        warm = [x for x in samples if x.get("at_s", 0) >= 119]
        if warm and len(samples) >= 2:
            base, end = warm[0], samples[-1]
            change = (end["rss_bytes"] / base["rss_bytes"] - 1) * 100
            verdict = "within ±10%" if abs(change) <= 10 else "**outside ±10%**"
            w(f"RSS after the warm-up ({base['at_s']:.0f} s) {base['rss_bytes'] / 1e6:.1f} MB, at the end "
              f"({end['at_s']:.0f} s) {end['rss_bytes'] / 1e6:.1f} MB: **{change:+.1f}%**, {verdict}. "
              f"Flow p99 over the run {fmt_ms(lat.get('p99'))}, max {fmt_ms(lat.get('max'))}; "
              f"requests failed: {fmt_int(soak.get('error_count'))}.")
            w("")
        if samples:
            w("| at | server RSS | p99 of the minute |")
            w("|---:|---:|---:|")
            for x in samples:
                w(f"| {x['at_s']:.0f} s | {x['rss_bytes'] / 1e6:.1f} MB | {fmt_ms(x.get('p99_ms'))} |")
        if (raw / "soak.svg").exists():
            w("")
            w(f"![soak: throughput and p50/p99 over time]({name}/soak.svg)")

    # -- compare
    w("")
    w("## Engine against the baseline: `../shared/baselines/compare.sh`")
    w("")
    if compare is None:
        w(f"Not measured: {md_escape(part_note(parts, 'compare') or 'missing compare.json')}.")
    else:
        cc = cond.get("compare") or {}
        w(f"`../shared/baselines/compare.sh {compare.get('rounds', cc.get('rounds', '?'))} "
          f"{compare.get('orders', cc.get('orders', '?'))}`: medians of {compare.get('rounds', '?')} "
          f"round(s), each run on a fresh redis-server; every run completed all its orders: "
          f"{'yes' if compare.get('all_completed') else '**no**'}.")
        w("")
        p99 = compare.get("p99_ms") or {}
        cpu = compare.get("redis_cpu_us_per_lifecycle") or {}
        w("| run | lifecycles/s | ratio to the baseline | p99 (largest per-command) | Redis CPU per lifecycle |")
        w("|---|---|---|---|---|")
        rows = [
            ("baseline (naive-actix, 256 in flight)", "baseline", compare.get("baseline_lifecycles_per_s"), 1),
            ("`orderly demo` (defaults)", "orderly", compare.get("orderly_lifecycles_per_s"), compare.get("ratio")),
            ("`orderly demo --batch 1 --concurrency 256`", "orderly_equal_in_flight",
             compare.get("orderly_equal_in_flight_lifecycles_per_s"), compare.get("ratio_equal_in_flight")),
        ]
        for label, key, rate, ratio in rows:
            c = cpu.get(key)
            w(f"| {label} | {fmt_int(rate)} | {'—' if ratio is None else f'**{ratio:g}**'} | "
              f"{fmt_ms(p99.get(key))} | {'—' if c is None else f'{c:g} µs'} |")
    w("")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

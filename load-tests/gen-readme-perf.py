#!/usr/bin/env python3
"""Regenerate README.md's benchmark summary from a `load-tests/bench.sh` report.

    python3 load-tests/gen-readme-perf.py load-tests/reports/<date>-<commit>.md README.md

Rewrites what is between the lines `<!-- bench:begin -->` and `<!-- bench:end -->` of the
README (a short paragraph naming the report and the command, then the report's results table)
and keeps everything else as it is. Standard library only (Python 3.11).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
RESULTS_BEGIN = "<!-- results:begin -->"
RESULTS_END = "<!-- results:end -->"
ROOT = Path(__file__).resolve().parent.parent


def fail(msg: str) -> int:
    print(f"gen-readme-perf: {msg}", file=sys.stderr)
    return 1


def report_link(report: Path, readme: Path) -> str:
    """The report's path as the README names it: relative to the project root when the report
    is inside it (the README lives there), else relative to the README's directory."""
    r = report.resolve()
    try:
        return r.relative_to(ROOT).as_posix()
    except ValueError:
        return Path(os.path.relpath(r, readme.resolve().parent)).as_posix()


def summary(report_text: str, link: str) -> list[str]:
    meta = {}
    m = re.search(r"<!-- bench-meta: (\{.*?\}) -->", report_text)
    if m:
        try:
            meta = json.loads(m.group(1))
        except ValueError:
            meta = {}
    lines = report_text.splitlines()
    try:
        a = lines.index(RESULTS_BEGIN)
        b = lines.index(RESULTS_END, a)
    except ValueError:
        raise SystemExit(fail(f"{link}: no results table between {RESULTS_BEGIN} and {RESULTS_END}"))
    table = lines[a + 1 : b]

    date = (meta.get("date_utc") or "?")[:10]
    commit = meta.get("commit") or "?"
    machine = []
    if meta.get("cores"):
        machine.append(f"{meta['cores']} cores")
    if meta.get("mem_total_kib"):
        machine.append(f"{meta['mem_total_kib'] / 1024 / 1024:.0f} GiB")
    machine_text = ", ".join(machine) or "this machine"
    redis = f"Redis {meta['redis_version']}" if meta.get("redis_version") else "Redis"
    p99 = meta.get("p99_ms", 50)
    step = meta.get("step_duration", "10s")
    quick = " **(a quick check run, not a measurement)**" if meta.get("quick") else ""

    out = [
        "### Latest benchmark run (`load-tests/bench.sh`)",
        "",
        f"Generated from [`{link}`]({link}){quick}: measured {date} at commit `{commit}` by "
        f"`load-tests/bench.sh` on {machine_text}, load generator, server and {redis} (loopback, "
        f"AOF everysec) sharing the cores; release build; knee search with steps of {step} and a "
        f"p99 bound of {p99:g} ms per flow. Each limit beside a number was measured in the same "
        "run on the same machine. The report has the machine, the conditions, every step of "
        "the knee searches (with plots), the flaky-gateways run and the baseline comparison; "
        "run `load-tests/bench.sh` to measure again and regenerate this section "
        "(see [`load-tests/reports/README.md`](load-tests/reports/README.md)).",
        "",
    ]
    out += table
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    report, readme = Path(sys.argv[1]), Path(sys.argv[2])
    try:
        report_text = report.read_text()
        readme_text = readme.read_text()
    except OSError as e:
        return fail(str(e))

    lines = readme_text.splitlines(keepends=True)
    begins = [i for i, l in enumerate(lines) if l.strip() == BEGIN]
    ends = [i for i, l in enumerate(lines) if l.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        return fail(f"{readme}: needs exactly one line {BEGIN} followed by one line {END} "
                    f"(found {len(begins)} and {len(ends)})")
    new_block = [l + "\n" for l in summary(report_text, report_link(report, readme))]
    result = "".join(lines[: begins[0] + 1] + new_block + lines[ends[0] :])

    # Write atomically beside the README.
    fd, tmp = tempfile.mkstemp(dir=readme.resolve().parent, prefix=".readme-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(result)
        os.chmod(tmp, readme.stat().st_mode & 0o777)
        os.replace(tmp, readme)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Reproducible benchmark of Orderly on this machine, with the limit of each number measured
# beside it in the same run. See load-tests/reports/README.md.
#
#   load-tests/bench.sh                                   # the full run, ~20-30 min
#   BENCH_SOAK=1 load-tests/bench.sh                      # and the 12-minute soak, ~35-45 min
#   BENCH_PARTS=soak load-tests/bench.sh                  # only the listed parts (no README update)
#   BENCH_QUICK=1 BENCH_SKIP_COMPARE=1 load-tests/bench.sh # a tiny run to check the script
#
# It builds release, then runs each part against servers of its own on loopback (a fresh
# redis-server with AOF everysec in a temp dir, a fresh `orderly serve`, the mock payment
# service), writes the raw outputs to load-tests/reports/<date>-<commit>/ and the report to
# load-tests/reports/<date>-<commit>.md, and regenerates README.md's performance summary from it
# (not for a quick run unless BENCH_README=1). A part that fails is recorded and the run goes on.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# ---------------------------------------------------------------- knobs
QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
  d_step_duration=2s d_steps=2 d_flaky_duration=3s d_rounds=1 d_orders=20000 d_redis_n=200000
  README_UPDATE=${BENCH_README:-0}
else
  d_step_duration=10s d_steps="" d_flaky_duration=20s d_rounds=3 d_orders=100000 d_redis_n=1000000
  README_UPDATE=${BENCH_README:-1}
fi
STEP_DURATION=${BENCH_STEP_DURATION:-$d_step_duration}
P99_MS=${BENCH_P99_MS:-50}
LIFECYCLE_START=${BENCH_LIFECYCLE_START:-500}
LIFECYCLE_STEP=${BENCH_LIFECYCLE_STEP:-500}
LIFECYCLE_MAX_STEPS=${BENCH_LIFECYCLE_MAX_STEPS:-${d_steps:-30}}
BULK_START=${BENCH_BULK_START:-10}
BULK_STEP=${BENCH_BULK_STEP:-10}
BULK_MAX_STEPS=${BENCH_BULK_MAX_STEPS:-${d_steps:-20}}
STREAM_START=${BENCH_STREAM_START:-5000}
STREAM_STEP=${BENCH_STREAM_STEP:-5000}
STREAM_MAX_STEPS=${BENCH_STREAM_MAX_STEPS:-${d_steps:-40}}
FLAKY_RATE=${BENCH_FLAKY_RATE:-200}
FLAKY_DURATION=${BENCH_FLAKY_DURATION:-$d_flaky_duration}
COMPARE_ROUNDS=${BENCH_COMPARE_ROUNDS:-$d_rounds}
COMPARE_ORDERS=${BENCH_COMPARE_ORDERS:-$d_orders}
SKIP_COMPARE=${BENCH_SKIP_COMPARE:-0}
REDIS_BENCH_N=${BENCH_REDIS_BENCH_N:-$d_redis_n}
COMPARE_SH=../shared/baselines/compare.sh
# The soak: lifecycles at the scenario's steady rate, with the server's memory windows (idle
# order actors, the simulated gateways' books) shorter than the soak so that steady state is
# reached within the 2-minute warm-up.
SOAK=${BENCH_SOAK:-0}
SOAK_IDLE_MS=${BENCH_SOAK_IDLE_MS:-60000}
SOAK_RETENTION_MS=${BENCH_SOAK_RETENTION_MS:-60000}
STANDARD_PARTS="redis-benchmark lifecycle bulk-ingest stream-ingest flaky-gateways compare"
PARTS=${BENCH_PARTS:-$STANDARD_PARTS}
[ "$SOAK" = 1 ] && [ -z "${BENCH_PARTS:-}" ] && PARTS="$PARTS soak"
for part in $PARTS; do
  case " $STANDARD_PARTS soak " in
    *" $part "*) ;;
    *) echo "bench.sh: BENCH_PARTS: unknown part '$part' (parts: $STANDARD_PARTS soak)" >&2; exit 2 ;;
  esac
done
want() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
PARTIAL=0
for part in $STANDARD_PARTS; do want "$part" || PARTIAL=1; done
if [ "$PARTIAL" = 1 ]; then README_UPDATE=${BENCH_README:-0}; fi

for tool in cargo python3 redis-server redis-cli redis-benchmark curl git timeout; do
  command -v "$tool" >/dev/null || { echo "bench.sh: $tool is not installed" >&2; exit 2; }
done

# ---------------------------------------------------------------- names and places
DATE=$(date -u +%Y-%m-%d)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=false
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then DIRTY=true; COMMIT="$COMMIT-dirty"; fi
NAME="$DATE-$COMMIT"
[ "$QUICK" = 1 ] && NAME="$NAME-quick"
[ "$PARTIAL" = 1 ] && NAME="$NAME-$(echo "$PARTS" | tr ' ' '+')"
REPORTS=load-tests/reports
RAW="$REPORTS/$NAME"
REPORT="$REPORTS/$NAME.md"
rm -rf "$RAW"
mkdir -p "$RAW/logs"

WORK=$(mktemp -d -t orderly-bench.XXXXXX)
: >"$WORK/pids"

# Every process a part starts is in $WORK/pids with its program name; a part stops its own
# when it ends, and this stops whatever is left (ctrl-c, a failure of the script itself).
cleanup() {
  local pid prog
  if [ -f "$WORK/pids" ]; then
    while read -r pid prog; do
      [ -n "$pid" ] || continue
      if kill -0 "$pid" 2>/dev/null && grep -qa -- "$prog" "/proc/$pid/cmdline" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
      fi
    done <"$WORK/pids"
    sleep 0.5
    while read -r pid prog; do
      [ -n "$pid" ] || continue
      if kill -0 "$pid" 2>/dev/null && grep -qa -- "$prog" "/proc/$pid/cmdline" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done <"$WORK/pids"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
# A part runs in a background subshell (PART_SUB) so that a signal reaches this shell at once:
# it stops the part (which stops its servers), then exits; cleanup does the rest.
PART_SUB=""
on_signal() {
  local i
  echo "bench.sh: interrupted" >&2
  if [ -n "$PART_SUB" ] && kill -0 "$PART_SUB" 2>/dev/null; then
    kill -TERM "$PART_SUB" 2>/dev/null || true
    for i in $(seq 300); do
      kill -0 "$PART_SUB" 2>/dev/null || break
      sleep 0.1
    done
  fi
  exit 130
}
trap on_signal INT TERM

log() { echo "[bench $(date -u +%H:%M:%S)] $*" >&2; }

# ---------------------------------------------------------------- build
log "building release (cargo build --release --workspace)"
cargo build --release --workspace
BIN="${CARGO_TARGET_DIR:-target}/release"
ORDERLY="$BIN/orderly"
LOAD="$BIN/orderly-load"
MOCK="$BIN/mock_payments"
for b in "$ORDERLY" "$LOAD" "$MOCK"; do
  [ -x "$b" ] || { echo "bench.sh: $b is missing after the build" >&2; exit 2; }
done

# ---------------------------------------------------------------- helpers
free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# "10s", "500ms", "2m", "1h" -> whole seconds, rounded up.
duration_secs() {
  python3 - "$1" <<'PY'
import math, re, sys
m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", sys.argv[1])
if not m:
    sys.exit(f"bad duration {sys.argv[1]!r}")
v, u = float(m.group(1)), m.group(2)
print(math.ceil(v * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u]))
PY
}

# record PART STATUS REASON: one line of $RAW/parts.jsonl.
record() {
  python3 - "$@" >>"$RAW/parts.jsonl" <<'PY'
import json, sys
print(json.dumps({"part": sys.argv[1], "status": sys.argv[2], "reason": sys.argv[3] or None}))
PY
}

# Inside a part (a subshell): a known failure, with its reason, ends the part.
fail() {
  [ -s "$WORK/reason" ] || printf '%s\n' "$*" >"$WORK/reason"
  exit 1
}
# Inside a part: a command that failed under set -e.
on_err() {
  [ -s "$WORK/reason" ] || printf "line %s: '%s' exited %s\n" "$2" "$3" "$1" >"$WORK/reason"
}

# start_bg PROG LOG CMD...: starts CMD in the background (stdout and stderr to LOG) and tracks
# it; BG_PID is its pid.
start_bg() {
  local prog=$1 logfile=$2; shift 2
  "$@" >"$logfile" 2>&1 &
  BG_PID=$!
  PART_PIDS+=("$BG_PID")
  echo "$BG_PID $prog" >>"$WORK/pids"
}

# stop_pid PID: TERM, up to 15 s to exit, then KILL.
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}
stop_part_procs() {
  local i
  for ((i = ${#PART_PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PART_PIDS[$i]}"; done
  PART_PIDS=()
}

# fresh_redis: a new redis-server (free loopback port, own dir, AOF everysec, no RDB).
# Sets REDIS_PORT and REDIS_URL.
fresh_redis() {
  local i dir
  REDIS_PORT=$(free_port)
  dir="$WORK/redis-$REDIS_PORT"
  mkdir -p "$dir"
  start_bg redis-server "$dir/stdout" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
    --dir "$dir" --appendonly yes --appendfsync everysec --save '' --daemonize no \
    --logfile "$dir/redis.log"
  for i in $(seq 100); do
    if [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then
      REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
      return 0
    fi
    kill -0 "$BG_PID" 2>/dev/null || break
    sleep 0.1
  done
  cp "$dir/redis.log" "$RAW/logs/$PART-redis.log" 2>/dev/null || true
  fail "redis-server on port $REDIS_PORT did not answer PING within 10 s: $(tail -n 2 "$dir/redis.log" 2>/dev/null | tr '\n' ' ')"
}

# wait_listening LOG PID WHAT: waits (30 s at most) for "listening on http://ADDR" in LOG and
# prints the URL.
wait_listening() {
  local logfile=$1 pid=$2 what=$3 i url
  for i in $(seq 300); do
    url=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$logfile" 2>/dev/null | head -n 1 | sed 's/^listening on //' || true)
    if [ -n "$url" ]; then echo "$url"; return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  local why excerpt
  if kill -0 "$pid" 2>/dev/null; then why="did not print 'listening on' within 30 s"; else why="exited before listening"; fi
  { head -n 20 "$logfile"; echo "…"; tail -n 20 "$logfile"; } 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' >"$RAW/logs/$PART-$what.log" || true
  excerpt=$(sed 's/\x1b\[[0-9;]*m//g' "$logfile" 2>/dev/null | grep -m 1 -E '^Error|panicked|ERROR' || true)
  [ -n "$excerpt" ] || excerpt=$(tail -n 2 "$logfile" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | tr '\n' ' ')
  fail "$what $why (log: logs/$PART-$what.log): $excerpt"
}

# wait_http URL WHAT: up to 10 s for a 2xx.
wait_http() {
  local i
  for i in $(seq 100); do
    curl -sf --noproxy '*' -m 2 -o /dev/null "$1" && return 0
    sleep 0.1
  done
  fail "$2 did not answer $1 within 10 s"
}

# start_serve [VAR=VALUE...]: a fresh `orderly serve` on a free loopback port against
# $REDIS_URL, with the given ORDERLY__* settings. Sets SERVE_URL.
start_serve() {
  local logfile="$WORK/serve-$PART.log"
  start_bg orderly "$logfile" env "$@" "$ORDERLY" serve --listen 127.0.0.1:0 --store "$REDIS_URL"
  SERVE_PID=$BG_PID
  SERVE_LOG=$logfile
  SERVE_URL=$(wait_listening "$logfile" "$SERVE_PID" serve)
  wait_http "$SERVE_URL/metrics" "orderly serve"
}

# run_bounded SECONDS OUT ERR CMD...: runs CMD with a time limit, in the background so that
# ctrl-c is handled at once; returns its exit status.
run_bounded() {
  local secs=$1 out=$2 err=$3 rc=0; shift 3
  timeout --kill-after=30 "$secs" "$@" >"$out" 2>"$err" &
  local pid=$!
  PART_PIDS+=("$pid")
  echo "$pid timeout" >>"$WORK/pids"
  wait "$pid" || rc=$?
  [ "$rc" != 124 ] || echo "(killed after $secs s)" >>"$err"
  return "$rc"
}

# check_json FILE: the file exists and is one JSON object.
check_json() {
  python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); assert isinstance(o, dict)' "$1" 2>/dev/null \
    || fail "$1 is missing or not a JSON object"
}

# keep_serve_log: the tail of the part's serve log in the raw dir (small).
keep_serve_log() {
  if [ -n "${SERVE_LOG:-}" ] && [ -f "$SERVE_LOG" ]; then
    tail -n 20 "$SERVE_LOG" | sed 's/\x1b\[[0-9;]*m//g' >"$RAW/logs/$PART-serve.log" || true
  fi
}

# run_part NAME FUNCTION ARGS...: runs one part in a subshell with set -e; records ok/failed.
run_part() {
  local name=$1 rc=0 reason t0; shift
  log "part $name"
  rm -f "$WORK/reason"
  t0=$(date +%s)
  (
    set -eEuo pipefail
    PART=$name
    PART_PIDS=()
    SERVE_LOG=""
    trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR
    trap 'keep_serve_log; stop_part_procs' EXIT
    trap 'exit 130' INT TERM
    "$@"
  ) &
  PART_SUB=$!
  wait "$PART_SUB" || rc=$?
  PART_SUB=""
  if [ "$rc" = 0 ]; then
    record "$name" ok ""
    log "part $name: ok ($(($(date +%s) - t0)) s)"
  else
    reason=$(cat "$WORK/reason" 2>/dev/null || true)
    record "$name" failed "${reason:-exited $rc}"
    log "part $name: FAILED: ${reason:-exited $rc}"
  fi
}

# ---------------------------------------------------------------- parts
part_redis_benchmark() {
  fresh_redis
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config get appendonly >"$RAW/redis-config.txt"
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config get appendfsync >>"$RAW/redis-config.txt"
  run_bounded 600 "$RAW/redis-benchmark.csv" "$RAW/logs/redis-benchmark.err" \
    redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -P 64 -t set -n "$REDIS_BENCH_N" --csv \
    || fail "redis-benchmark exited $?: $(tail -n 2 "$RAW/logs/redis-benchmark.err" | tr '\n' ' ')"
  grep -q '"SET"' "$RAW/redis-benchmark.csv" || fail "redis-benchmark printed no SET line"
  [ -s "$RAW/logs/redis-benchmark.err" ] || rm -f "$RAW/logs/redis-benchmark.err"
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info persistence | tr -d '\r' \
    | grep -E '^(aof_enabled|aof_last_write_status|aof_current_size)' >>"$RAW/redis-config.txt" || true
}

# part_knee SCENARIO START STEP MAX_STEPS [stream]
part_knee() {
  local scenario=$1 start=$2 step=$3 steps=$4 kind=${5:-http} budget rc=0
  local env=() args=()
  fresh_redis
  [ "$kind" = stream ] && env+=(ORDERLY__INGEST__ENABLED=true)
  start_serve "${env[@]}"
  args=(knee --target "$SERVE_URL" --scenario "$scenario" --p99-ms "$P99_MS"
    --start-rate "$start" --step "$step" --max-steps "$steps" --step-duration "$STEP_DURATION"
    --json --report "$RAW/knee-$scenario.json" --plot "$RAW/knee-$scenario.svg" --quiet)
  [ "$kind" = stream ] && args+=(--redis "$REDIS_URL")
  budget=$((steps * ($(duration_secs "$STEP_DURATION") + 60) + 60))
  run_bounded "$budget" "$WORK/knee-$scenario.out" "$RAW/logs/knee-$scenario.err" "$LOAD" "${args[@]}" || rc=$?
  [ "$rc" = 0 ] || fail "orderly-load knee exited $rc: $(tail -n 3 "$RAW/logs/knee-$scenario.err" | tr '\n' ' ')"
  check_json "$RAW/knee-$scenario.json"
  [ -s "$RAW/logs/knee-$scenario.err" ] || rm -f "$RAW/logs/knee-$scenario.err"
}

part_flaky() {
  local mock_url rc=0
  start_bg mock_payments "$WORK/mock.log" "$MOCK" --listen 127.0.0.1:0 --fault-profile flaky
  local mock_pid=$BG_PID
  mock_url=$(wait_listening "$WORK/mock.log" "$mock_pid" mock_payments)
  wait_http "$mock_url/v1/stats" mock_payments
  fresh_redis
  start_serve ORDERLY__PAYMENTS__ROUTES__CARD=http ORDERLY__PAYMENTS__ROUTES__ALIPAY=http \
    ORDERLY__PAYMENTS__ROUTES__WECHAT=http ORDERLY__GATEWAYS__HTTP__BASE_URL="$mock_url"
  run_bounded $(($(duration_secs "$FLAKY_DURATION") + 120)) "$WORK/flaky.out" "$RAW/logs/flaky.err" \
    "$LOAD" run --target "$SERVE_URL" --scenario flaky-gateways --rate "$FLAKY_RATE" \
    --duration "$FLAKY_DURATION" --mock-payments "$mock_url" --report "$RAW/flaky.json" --quiet || rc=$?
  [ "$rc" = 0 ] || fail "orderly-load run exited $rc: $(tail -n 3 "$RAW/logs/flaky.err" | tr '\n' ' ')"
  check_json "$RAW/flaky.json"
  cp "$WORK/flaky.out" "$RAW/flaky.txt"
  [ -s "$RAW/logs/flaky.err" ] || rm -f "$RAW/logs/flaky.err"
}

part_soak() {
  local scenario=load-tests/scenarios/soak.toml budget rc=0
  if [ "$QUICK" = 1 ]; then
    # A tiny soak to check the script: 8 s at the same rate, sampled every 2 s.
    scenario="$WORK/soak-quick.toml"
    python3 - load-tests/scenarios/soak.toml "$scenario" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r'(?m)^duration = .*$', 'duration = "8s"', text)
text = re.sub(r'(?m)^sample_interval = .*$', 'sample_interval = "2s"', text)
open(sys.argv[2], "w").write(text)
PY
  fi
  fresh_redis
  start_serve ORDERLY__ENGINE__IDLE_TIMEOUT_MS="$SOAK_IDLE_MS" \
    ORDERLY__PAYMENTS__SIMULATED_LEDGER_RETENTION_MS="$SOAK_RETENTION_MS"
  budget=$(python3 -c 'import re,sys,tomllib
d=tomllib.load(open(sys.argv[1],"rb"))
u={"ms":0.001,"s":1,"m":60,"h":3600}
t=0
for st in d["stages"]:
    m=re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", st["duration"]); t+=float(m[1])*u[m[2]]
print(int(t)+180)' "$scenario")
  run_bounded "$budget" "$WORK/soak.out" "$RAW/logs/soak.err" \
    "$LOAD" run --target "$SERVE_URL" --scenario "$scenario" --report "$RAW/soak.json" \
    --report-md "$RAW/soak.md" --plot "$RAW/soak.svg" --quiet || rc=$?
  [ "$rc" = 0 ] || fail "orderly-load run exited $rc: $(tail -n 3 "$RAW/logs/soak.err" | tr '\n' ' ')"
  check_json "$RAW/soak.json"
  [ -s "$RAW/logs/soak.err" ] || rm -f "$RAW/logs/soak.err"
}

part_compare() {
  local rc=0
  # shellcheck disable=SC2016 # $1.. expand in the inner shell
  run_bounded 5400 "$RAW/compare.log" "$WORK/compare.stderr" \
    bash -c 'bash "$1" "$2" "$3" 2>&1' compare "$COMPARE_SH" "$COMPARE_ROUNDS" "$COMPARE_ORDERS" || rc=$?
  cat "$WORK/compare.stderr" >>"$RAW/compare.log" 2>/dev/null || true
  [ "$rc" = 0 ] || fail "$COMPARE_SH $COMPARE_ROUNDS $COMPARE_ORDERS exited $rc: $(grep -v '^{' "$RAW/compare.log" | tail -n 2 | tr '\n' ' ')"
  grep -v '^\s*$' "$RAW/compare.log" | tail -n 1 >"$RAW/compare.json"
  check_json "$RAW/compare.json"
}

# ---------------------------------------------------------------- machine and conditions
log "machine info -> $RAW/machine.json"
mem_kib=$(awk '/^MemTotal:/{print $2}' /proc/meminfo)
cpu_model=$(awk -F': *' '/^model name/{print $2; exit}' /proc/cpuinfo)
[ -n "$cpu_model" ] || cpu_model=$(uname -m)
python3 - "$RAW/machine.json" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$COMMIT" \
  "$(git rev-parse HEAD 2>/dev/null || echo unknown)" "$DIRTY" "$(nproc)" "$mem_kib" "$(uname -r)" \
  "$cpu_model" "$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')" \
  "$(rustc --version 2>/dev/null || echo unknown)" <<'PY'
import json, sys
a = sys.argv
json.dump({
    "date_utc": a[2], "commit": a[3], "commit_full": a[4], "dirty": a[5] == "true",
    "cores": int(a[6]), "mem_total_kib": int(a[7]), "kernel": a[8], "cpu_model": a[9],
    "redis_version": a[10], "rustc": a[11],
}, open(a[1], "w"), indent=2)
PY

bulk_lines=$(python3 -c 'import tomllib;print(tomllib.load(open("load-tests/scenarios/bulk-ingest.toml","rb"))["bulk"]["lines"])' 2>/dev/null || echo 1000)
python3 - "$RAW/conditions.json" <<PY
import json, os, sys
json.dump({
    "quick": "$QUICK" == "1",
    "release_build": True,
    "p99_ms": float("$P99_MS"),
    "step_duration": "$STEP_DURATION",
    "knee": {
        "lifecycle": {"start": $LIFECYCLE_START, "step": $LIFECYCLE_STEP, "max_steps": $LIFECYCLE_MAX_STEPS},
        "bulk-ingest": {"start": $BULK_START, "step": $BULK_STEP, "max_steps": $BULK_MAX_STEPS},
        "stream-ingest": {"start": $STREAM_START, "step": $STREAM_STEP, "max_steps": $STREAM_MAX_STEPS},
    },
    "bulk_lines": int("$bulk_lines"),
    "flaky": {"rate": $FLAKY_RATE, "duration": "$FLAKY_DURATION"},
    "compare": {"rounds": $COMPARE_ROUNDS, "orders": $COMPARE_ORDERS, "skipped": "$SKIP_COMPARE" == "1"},
    "parts": "$PARTS".split(),
    "soak": {"idle_timeout_ms": $SOAK_IDLE_MS, "ledger_retention_ms": $SOAK_RETENTION_MS},
    "redis_benchmark": {"requests": $REDIS_BENCH_N, "pipeline": 64},
    "orderly_env": {k: v for k, v in os.environ.items() if k.startswith("ORDERLY__")},
}, open(sys.argv[1], "w"), indent=2)
PY

# ---------------------------------------------------------------- run
skip() { record "$1" skipped "not in BENCH_PARTS"; }
if want redis-benchmark; then run_part redis-benchmark part_redis_benchmark; else skip redis-benchmark; fi
if want lifecycle; then
  run_part lifecycle part_knee lifecycle "$LIFECYCLE_START" "$LIFECYCLE_STEP" "$LIFECYCLE_MAX_STEPS"
else skip lifecycle; fi
if want bulk-ingest; then
  run_part bulk-ingest part_knee bulk-ingest "$BULK_START" "$BULK_STEP" "$BULK_MAX_STEPS"
else skip bulk-ingest; fi
if want stream-ingest; then
  run_part stream-ingest part_knee stream-ingest "$STREAM_START" "$STREAM_STEP" "$STREAM_MAX_STEPS" stream
else skip stream-ingest; fi
if want flaky-gateways; then run_part flaky-gateways part_flaky; else skip flaky-gateways; fi
if want soak; then run_part soak part_soak; fi
if ! want compare; then
  skip compare
elif [ "$SKIP_COMPARE" = 1 ]; then
  record compare skipped "BENCH_SKIP_COMPARE=1"
elif [ ! -f "$COMPARE_SH" ]; then
  record compare "not available" "$COMPARE_SH does not exist"
else
  run_part compare part_compare
fi
date -u +%Y-%m-%dT%H:%M:%SZ >"$RAW/finished_utc.txt"

# ---------------------------------------------------------------- report
log "report -> $REPORT"
python3 load-tests/bench-report.py "$RAW" >"$REPORT"
if [ "$README_UPDATE" = 1 ]; then
  log "README.md performance summary"
  python3 load-tests/gen-readme-perf.py "$REPORT" README.md
fi
du -sh "$RAW" >&2 || true
log "done: $REPORT"

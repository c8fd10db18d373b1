#!/usr/bin/env bash
# CPU time per request of one gateway binary and config, measured the way the A/B tables
# in BENCHMARKS.md are: the gateway alone on CPU 1, the bench mock and oha on CPU 0,
# closed-loop load at c=16 (or a fixed rate with RATE=…), CPU time (user+system, and user
# alone) read from /proc over the measured window. Run it in rounds, interleaving the
# binaries or configs compared, and compare medians: one round on a shared machine is
# noise.
#
#   benches/load/cpu-rounds.sh BINARY CONFIG [PAYLOAD]   (prints one line)
#
# Needs nginx with the echo module and oha (../shared/bench/bench.sh install).
set -euo pipefail
BIN=$1 CFG=$2
BENCH_DIR=${BENCH_DIR:-$(cd "$(dirname "$0")/../../../shared/bench" && pwd)}
PAY=${3:-$BENCH_DIR/payload/chat.json}
SECONDS_MEASURED=${SECONDS_MEASURED:-6} PORT=${MOCK_PORT:-18555}
RUN=$(mktemp -d); mkdir -p "$RUN/mock-body"
sed -e "s#@RUN@#$RUN#g" -e "s#@MOCK_PORT@#$PORT#g" "$BENCH_DIR/conf/mock.conf.tmpl" > "$RUN/mock.conf"
taskset -c 0 nginx -p "$RUN" -c "$RUN/mock.conf" -e "$RUN/mock-error.log"
export BENCH_MOCK_V1=http://127.0.0.1:$PORT/v1 SWITCHYARD_LOG_FORMAT=text
taskset -c 1 "$BIN" serve --config "$CFG" > "$RUN/gateway.log" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null; kill "$(cat "$RUN/mock.pid")" 2>/dev/null; rm -rf "$RUN"' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18484/health && break; sleep 0.1; done
LOAD=(-c 16 --no-tui -m POST -H 'Authorization: Bearer sk-sy-dev' -H 'content-type: application/json' -D "$PAY")
[ -n "${RATE:-}" ] && LOAD+=(-q "$RATE")
URL=http://127.0.0.1:18484/v1/chat/completions
taskset -c 0 oha -z 2s "${LOAD[@]}" "$URL" > /dev/null
read -r u0 s0 < <(awk '{print $14, $15}' /proc/$GW/stat)
taskset -c 0 oha -z "${SECONDS_MEASURED}s" "${LOAD[@]}" "$URL" > "$RUN/oha.txt"
read -r u1 s1 < <(awk '{print $14, $15}' /proc/$GW/stat)
ok=$(grep -o '\[200\] [0-9]*' "$RUN/oha.txt" | awk '{print $2}')
rss=$(awk '/VmHWM/ {print $2}' /proc/$GW/status)
ticks=$(getconf CLK_TCK)
python3 -c "
ok, t = $ok, $ticks
print(f'$(basename "$BIN") $(basename "$CFG"): {ok} ok, cpu {($u1-$u0+$s1-$s0)/t/ok*1e6:.1f} us/req, user {($u1-$u0)/t/ok*1e6:.1f} us/req, peak rss {$rss/1024:.0f} MB')"

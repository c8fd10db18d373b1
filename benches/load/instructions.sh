#!/usr/bin/env bash
# Instructions the gateway executes per request, counted by valgrind (callgrind): user
# space only, and the same from run to run (±0.3 %), where CPU time on a shared machine
# moves by ±20 %. The A/B figure to trust for small differences; the load scenario's CPU
# time (which includes the kernel's network work) for the absolute cost.
#
#   benches/load/instructions.sh BINARY CONFIG [PAYLOAD]   (prints one line)
#
# The gateway runs under callgrind (about 50x slower, so timers fire relatively more
# often: background work such as span export is over-counted); after 500 warm-up
# requests the counters are zeroed and N (default 6000) requests at c=16 are counted.
set -euo pipefail
BIN=$1 CFG=$2 N=${N:-6000}
BENCH_DIR=${BENCH_DIR:-$(cd "$(dirname "$0")/../../../shared/bench" && pwd)}
PAY=${3:-$BENCH_DIR/payload/chat.json}
PORT=${MOCK_PORT:-18556} GW_PORT=${GW_PORT:-18485}
RUN=$(mktemp -d); mkdir -p "$RUN/mock-body"
sed -e "s#@RUN@#$RUN#g" -e "s#@MOCK_PORT@#$PORT#g" "$BENCH_DIR/conf/mock.conf.tmpl" > "$RUN/mock.conf"
nginx -p "$RUN" -c "$RUN/mock.conf" -e "$RUN/mock-error.log"
sed "s#127.0.0.1:18484#127.0.0.1:$GW_PORT#" "$CFG" > "$RUN/config.yaml"
export BENCH_MOCK_V1=http://127.0.0.1:$PORT/v1 SWITCHYARD_LOG_FORMAT=text
valgrind --tool=callgrind --callgrind-out-file="$RUN/callgrind.%p" \
    "$BIN" serve --config "$RUN/config.yaml" > "$RUN/gateway.log" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null; wait $GW 2>/dev/null; kill "$(cat "$RUN/mock.pid")" 2>/dev/null; rm -rf "$RUN"' EXIT
for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$GW_PORT/health" && break; sleep 0.2; done
LOAD=(--no-tui -m POST -H 'Authorization: Bearer sk-sy-dev' -H 'content-type: application/json' -D "$PAY")
URL=http://127.0.0.1:$GW_PORT/v1/chat/completions
oha -n 500 -c 8 "${LOAD[@]}" "$URL" > /dev/null
callgrind_control -z $GW > /dev/null 2>&1
oha -n "$N" -c 16 "${LOAD[@]}" "$URL" > "$RUN/oha.txt"
callgrind_control -d $GW > /dev/null 2>&1
sleep 1
ok=$(grep -o '\[200\] [0-9]*' "$RUN/oha.txt" | awk '{print $2}')
ir=$(cat "$RUN"/callgrind.$GW.* | awk '/^summary:/ {s += $2} END {print s}')
echo "$(basename "$BIN") $(basename "$CFG"): $ok/$N ok, $((ir / N)) instructions/request"

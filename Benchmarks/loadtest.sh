#!/usr/bin/env bash
# edgemux's load test: one command that builds edgemux (release), starts it with one worker pinned
# to CPU 1 and a real backend (nginx: HTTP/1.1 on :9001, h2c on :9002, one worker on CPU 0) on
# loopback, and measures, with the load generators on CPU 0:
#   TLS 1.3 full and resumed handshakes/s (tlsconn, new connection per request), HTTP/1.1
#   keep-alive req/s and latency (wrk -c64), HTTP/2 req/s (h2load -c64 -m10), gRPC streaming
#   messages/s (grpcio client and server), 64 MiB downloads MB/s (curl), and memory per idle TLS
#   connection (5,000 connections, a fresh edgemux per ALPN).
# Per-core figures divide by edgemux's own CPU use (/proc/PID/stat). Every loop is bounded in time.
# It reuses ../shared/bench/peers (tlsconn.c, idle_conns.py, the backend config): set PEERS to
# point elsewhere. For the side-by-side with HAProxy, nginx and nghttpx, see the README.
#
# usage: Benchmarks/loadtest.sh [--quick]
#   env: WORK (default /tmp/edgemux-loadtest), PORT (8446), WORKERS (1; with 2, edgemux is not
#   pinned and shares both CPUs with the load: for the scaling figure, read the per-core column)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PEERS=${PEERS:-$ROOT/../shared/bench/peers}
WORK=${WORK:-/tmp/edgemux-loadtest}
PORT=${PORT:-8446}
DUR=8; HS_DUR=6; MEM_CONNS=5000; STREAM_MSGS=20000
[[ "${1:-}" == "--quick" ]] && { DUR=3; HS_DUR=3; MEM_CONNS=1000; STREAM_MSGS=5000; }
for b in nginx wrk h2load curl cc taskset; do
  command -v $b >/dev/null || { echo "missing $b: apt-get install nginx wrk nghttp2-client curl gcc libssl-dev util-linux" >&2; exit 1; }
done
mkdir -p "$WORK"/{run,www,bin,tmp/backend-body,tmp/backend-proxy,tmp/backend-fastcgi,tmp/backend-uwsgi,tmp/backend-scgi}
PEERS_WORK="$WORK" "$PEERS/gen-certs.sh" >/dev/null
CERTS="$WORK/certs"
[[ -s "$WORK/www/big" ]] || head -c 67108864 /dev/urandom > "$WORK/www/big"
[[ -x "$WORK/bin/tlsconn" ]] || cc -O2 -o "$WORK/bin/tlsconn" "$PEERS/tools/tlsconn.c" -lssl -lcrypto
source "$ROOT/Benchmarks/common.sh"
bench_render backend-nginx.conf.in "$WORK/run" "$WORK/www" "$CERTS" | sed "s#$WORK/run/tmp#$WORK/tmp#g" > "$WORK/run/backend-nginx.conf"
bench_client_cnf "$WORK/run/client-openssl.cnf"
C="env OPENSSL_CONF=$WORK/run/client-openssl.cnf taskset -c 0"

swift build -c release --product edgemux >/dev/null
BIN="$(swift build -c release --show-bin-path)/edgemux"
WORKERS=${WORKERS:-1}
PIN="taskset -c 1"; [[ $WORKERS -gt 1 ]] && PIN=""
cat > "$WORK/run/edgemux.yaml" <<YAML
workers: $WORKERS
listeners:
  - name: bench
    listen: 127.0.0.1:$PORT
    tls:
      certificates:
        - { cert: $CERTS/server.pem, key: $CERTS/server.key }
      alpn: [h2, http/1.1]
    routes:
      - name: agents
        match: { alpn: h2, content_type: application/grpc }
        backend: grpc
      - name: web
        backend: web
backends:
  web:
    endpoints: { http1: [127.0.0.1:9001], h2c: [127.0.0.1:9002] }
  grpc:
    protocol: h2c
    endpoints: [127.0.0.1:9003]
YAML

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
taskset -c 0 nginx -c "$WORK/run/backend-nginx.conf" > "$WORK/run/backend.out" 2>&1 & PIDS+=($!)
taskset -c 0 /usr/bin/python3 "$ROOT/Tests/IntegrationTests/Peers/peers.py" grpc --port 9003 --max-seconds 900 > "$WORK/run/grpc.out" 2>&1 & PIDS+=($!)
EDGEMUX=
start_edgemux() {
  [[ -n "$EDGEMUX" ]] && { kill "$EDGEMUX"; wait "$EDGEMUX" 2>/dev/null || true; }
  $PIN "$BIN" run --config "$WORK/run/edgemux.yaml" --log-level warning > "$WORK/run/edgemux.log" 2>&1 &
  EDGEMUX=$!; PIDS+=($EDGEMUX)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return; sleep 0.05; done
  echo "edgemux did not start: $(cat "$WORK/run/edgemux.log")" >&2; exit 1
}
cpu_ticks() { awk '{print $14+$15}' "/proc/$EDGEMUX/stat"; }
HZ=$(getconf CLK_TCK)
ROWS=()
# run NAME UNIT VALUE-EXTRACTOR COMMAND...: measures edgemux's CPU over the command
measure() {
  local name=$1 unit=$2 extract=$3; shift 3
  local t0 c0 t1 c1 out value cpu
  t0=$(date +%s.%N); c0=$(cpu_ticks)
  out=$("$@" 2>&1) || true
  t1=$(date +%s.%N); c1=$(cpu_ticks)
  value=$(eval "$extract" <<<"$out")
  cpu=$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" -v hz="$HZ" 'BEGIN{printf "%.1f", (b-a)/hz/(e-s)*100}')
  ROWS+=("| $name | ${value:-ERR} $unit | $cpu | $(awk -v v="${value:-0}" -v c="$cpu" 'BEGIN{ if (c+0 >= 5 && v ~ /^[0-9.]+$/) printf "%.0f", v/(c/100); else print "n/a" }') |")
  echo "$out" > "$WORK/run/$(tr ' /' '__' <<<"$name").txt"
}
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; }
wait_port 9001; wait_port 9002; wait_port 9003
start_edgemux

measure "TLS 1.3 full handshakes/s (tlsconn -c50)" "/s" "sed -n 's/.* rate=\([0-9.]*\).*/\1/p'" \
  timeout $((HS_DUR + 20)) $C "$WORK/bin/tlsconn" -H 127.0.0.1 -p $PORT -s localhost -c 50 -d $HS_DUR -w 1 -a http/1.1 -P /small
measure "TLS 1.3 resumed handshakes/s" "/s" "sed -n 's/.* rate=\([0-9.]*\).*/\1/p'" \
  timeout $((HS_DUR + 20)) $C "$WORK/bin/tlsconn" -H 127.0.0.1 -p $PORT -s localhost -c 50 -d $HS_DUR -w 1 -a http/1.1 -P /small -r
measure "HTTP/1.1 keep-alive req/s (wrk -c64)" "/s" "awk '/Requests\/sec/{print \$2}'" \
  timeout $((DUR + 20)) $C wrk -t1 -c64 -d${DUR}s --timeout 5s --latency "https://localhost:$PORT/small"
LAT=$(awk '/ 50%/{p50=$2} / 99%/{p99=$2} END{print "p50 " p50 ", p99 " p99}' "$WORK/run/HTTP_1.1_keep-alive_req_s_(wrk_-c64).txt")
measure "HTTP/2 req/s (h2load -c64 -m10)" "/s" "awk '/^finished in/{gsub(\",\",\"\"); print \$4}'" \
  timeout $((DUR + 20)) $C h2load -t1 -c64 -m10 -D $DUR --warm-up-time=1 "https://localhost:$PORT/small"
measure "gRPC server-streaming messages/s" "/s" "awk '/^ok stream/{print \$3}'" \
  timeout 120 $C /usr/bin/python3 "$ROOT/Benchmarks/grpc_stream_rate.py" --target localhost:$PORT --ca "$CERTS/ca.pem" --count $STREAM_MSGS
for proto in http1.1 http2; do
  measure "64 MiB download over ${proto/http/HTTP\/}, MB/s (median of 3)" "MB/s" "awk '{print \$1/1e6}' | sort -g | sed -n 2p" \
    bash -c "for i in 1 2 3; do timeout 60 $C curl -s -o /dev/null --$proto --cacert $CERTS/ca.pem --resolve localhost:$PORT:127.0.0.1 -w '%{speed_download}\n' https://localhost:$PORT/big; done"
done
MEM=()
for alpn in http/1.1 h2; do
  start_edgemux; sleep 0.5
  line=$(timeout 90 $C /usr/bin/python3 "$PEERS/tools/idle_conns.py" --port $PORT --cafile "$CERTS/ca.pem" -n $MEM_CONNS --alpn $alpn --pids $EDGEMUX --max-seconds 75 2>&1 | grep '^alpn=' | tail -1)
  MEM+=("| memory per idle TLS connection, ALPN $alpn ($MEM_CONNS conns) | $(sed -n 's/.* kib_per_conn=\([0-9.-]*\).*/\1/p' <<<"$line") KiB | | |")
done

echo
echo "## edgemux load test ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs; edgemux $WORKERS worker(s)$([[ -n $PIN ]] && echo " on CPU 1"), load and backend on CPU 0)"
echo
echo "| measurement | value | edgemux CPU % | per edgemux core |"
echo "|---|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}" "${MEM[@]}"
echo "| HTTP/1.1 latency (wrk) | $LAT | | |"
echo
echo "raw outputs: $WORK/run"

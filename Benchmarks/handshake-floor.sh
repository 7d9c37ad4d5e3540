#!/usr/bin/env bash
# Full TLS 1.3 handshakes per proxy core, interleaved rounds (the machine is noisy): OpenSSL's own
# floor (tools/bare-tls-server.c: handshake, one request, answer, close, no backend), edgemux,
# nginx and HAProxy, each pinned to CPU 1 with tlsconn and the backend nginx on CPU 0, as in
# ../shared/bench/peers. Prints each round and the median per target.
# usage: Benchmarks/handshake-floor.sh [ROUNDS (default 5)] [SECONDS per round (default 4)]
# Needs: apt-get install nginx haproxy gcc libssl-dev (and the harness: ../shared/bench/peers)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}; SECS=${2:-4}
(( ROUNDS <= 20 && SECS <= 30 )) || { echo "at most 20 rounds of 30 s" >&2; exit 2; }
PEERS=${PEERS:-$(pwd)/../shared/bench/peers}
W=${PEERS_WORK:-/tmp/bench-peers}; export PEERS_WORK=$W
R=$W/floor; mkdir -p "$R/tmp" "$W/www"
"$PEERS/gen-certs.sh" >/dev/null
cc -O2 -o "$R/bare-tls-server" Benchmarks/tools/bare-tls-server.c -lssl -lcrypto
cc -O2 -o "$R/tlsconn" "$PEERS/tools/tlsconn.c" -lssl -lcrypto
swift build -c release --product edgemux >/dev/null
BIN="$(swift build -c release --show-bin-path)/edgemux"
source Benchmarks/common.sh
bench_render backend-nginx.conf.in "$R" "$W/www" "$W/certs" > "$R/backend.conf"
bench_render nginx-proxy.conf.in "$R" "$W/www" "$W/certs" 8444 > "$R/nginx-proxy.conf"
bench_render haproxy.cfg.in "$R" "$W/www" "$W/certs" 8443 > "$R/haproxy.cfg"
cat > "$R/edgemux.yaml" <<YAML
workers: 1
listeners:
  - name: bench
    listen: 127.0.0.1:8446
    tls:
      certificates: [{ cert: $W/certs/server.pem, key: $W/certs/server.key }]
    routes: [{ name: web, backend: peers }]
backends:
  peers:
    endpoints: { http1: [127.0.0.1:9001], h2c: [127.0.0.1:9002] }
YAML
bench_client_cnf "$R/client.cnf"
STARTED=()
cleanup() { for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
taskset -c 0 nginx -c "$R/backend.conf" -e "$R/backend.err" >/dev/null 2>&1 & BACKEND=$!; STARTED+=("$BACKEND")
sleep 0.5
tree() { echo "$1"; for c in $(ps -o pid= --ppid "$1"); do tree "$c"; done; }
ticks() { local s=0 v p; for p in "$@"; do v=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0); s=$((s + v)); done; echo $s; }
stop() { kill "$1" 2>/dev/null || true; sleep 0.3; kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; sleep 0.3; }
declare -A ALL=()
for r in $(seq "$ROUNDS"); do
  for t in bare edgemux nginx haproxy; do
    case $t in
      bare) taskset -c 1 "$R/bare-tls-server" 8450 "$W/certs/server.pem" "$W/certs/server.key" & port=8450;;
      edgemux) taskset -c 1 "$BIN" run --config "$R/edgemux.yaml" --log-level warning >/dev/null 2>&1 & port=8446;;
      nginx) taskset -c 1 nginx -c "$R/nginx-proxy.conf" -e "$R/nginx.err" >/dev/null 2>&1 & port=8444;;
      haproxy) taskset -c 1 haproxy -db -f "$R/haproxy.cfg" >/dev/null 2>&1 & port=8443;;
    esac
    P=$!; STARTED+=("$P"); sleep 1
    pids=$(tree "$P")
    t0=$(ticks $pids); s0=$(date +%s.%N)
    out=$(env OPENSSL_CONF="$R/client.cnf" taskset -c 0 timeout $((SECS + 10)) "$R/tlsconn" -H 127.0.0.1 -p $port -s localhost -c 50 -d "$SECS" -w 0 -n 10000000 -a http/1.1 -P /small)
    s1=$(date +%s.%N); t1=$(ticks $pids)
    stop "$P"
    rate=$(sed -n 's/.* rate=\([0-9.]*\).*/\1/p' <<<"$out")
    line=$(awk -v t=$t -v a="$t0" -v b="$t1" -v s="$s0" -v e="$s1" -v r="${rate:-0}" -v hz="$(getconf CLK_TCK)" \
      'BEGIN{c=(b-a)/hz/(e-s); printf "%-8s %6.0f/s  cpu %5.1f%%  per core %6.0f", t, r, c*100, (c > 0.05 ? r/c : 0)}')
    echo "round $r: $line"
    ALL[$t]+=" $(awk '{print $NF}' <<<"$line")"
  done
done
echo "median full handshakes per proxy core:"
for t in bare edgemux nginx haproxy; do
  printf '  %-8s %s\n' "$t" "$(tr ' ' '\n' <<<"${ALL[$t]}" | grep -E '^[0-9]+$' | sort -n | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')"
done

#!/usr/bin/env bash
# edgemux beside HAProxy, nginx and nghttpx in one run of ../shared/bench/peers/run.sh: builds
# edgemux (release) and starts it, one worker each, with the harness's certificates and routing
# contract (h2 -> h2c :9002, http/1.1 -> :9001) twice: "edgemux" on 127.0.0.1:8446 in request
# mode (the default for web routes: every request routed on its own, backends multiplexed), and
# "edgemux-relay" on :8448 with the same route in relay mode (RELAY=0 leaves it out). With
# H2_UPSTREAM=h1 (every peer translates HTTP/2 to HTTP/1.1) edgemux's backend has HTTP/1.1
# endpoints only, and the relay row is left out (a relay does not translate). The harness pins
# each to CPU 1 like the peers. Beside them runs the relay floor (tools/bare-tls-relay.c on :8447:
# TLS termination and a byte relay in C with edgemux's system calls and nothing else; FLOOR=0
# leaves it out), and the request-mode floor (tools/bare-h2-proxy.c on :8450: TLS, an nghttp2
# server session and an nghttp2 client session to the h2c backend per client connection, passing
# requests and responses between them and nothing else; with H2_UPSTREAM=h1 the same server
# session in front of pooled HTTP/1.1 backend connections, one per request in flight; HTTP/2 rows
# only; H2FLOOR=0 leaves it out). Afterwards it prints the backend connections each edgemux
# opened in the run.
# Extra arguments go to run.sh (e.g. --quick, --peers none).
# Needs: apt-get install haproxy nginx nghttp2-client nghttp2-proxy wrk curl gcc libssl-dev
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS:-$(pwd)/../shared/bench/peers}
export PEERS_WORK=${PEERS_WORK:-/tmp/bench-peers}
PORT=${PORT:-8446}
RELAY_PORT=${RELAY_PORT:-8448}
RELAY=${RELAY:-1}
[[ ${H2_UPSTREAM:-h2c} == h1 ]] && RELAY=0
FLOOR=${FLOOR:-1}
FLOOR_PORT=${FLOOR_PORT:-8447}
H2FLOOR=${H2FLOOR:-1}
H2FLOOR_PORT=${H2FLOOR_PORT:-8450}
H2FLOOR_BACKEND="9002 3600 h2c"
[[ ${H2_UPSTREAM:-h2c} == h1 ]] && H2FLOOR_BACKEND="9001 3600 h1"
"$PEERS/gen-certs.sh" >/dev/null
swift build -c release --product edgemux >/dev/null
BIN="$(swift build -c release --show-bin-path)/edgemux"
mkdir -p "$PEERS_WORK"
ENDPOINTS='{ http1: [127.0.0.1:9001], h2c: [127.0.0.1:9002] }'
[[ ${H2_UPSTREAM:-h2c} == h1 ]] && ENDPOINTS='{ http1: [127.0.0.1:9001] }'
config() {  # name port admin-port mode
  cat > "$PEERS_WORK/$1.yaml" <<YAML
workers: 1
admin:
  listen: 127.0.0.1:$3
listeners:
  - name: bench
    listen: 127.0.0.1:$2
    tls:
      certificates:
        - { cert: $PEERS_WORK/certs/server.pem, key: $PEERS_WORK/certs/server.key }
      alpn: [h2, http/1.1]
    routes:
      - name: web
        backend: peers
        mode: $4
backends:
  peers:
    endpoints: $ENDPOINTS
YAML
}
config edgemux $PORT $((PORT + 1000)) request
"$BIN" run --config "$PEERS_WORK/edgemux.yaml" --log-level warning > "$PEERS_WORK/edgemux.log" 2>&1 &
EDGEMUX=$!
RELAY_PID=""
TARGETS=(--target edgemux=$PORT)
if [[ $RELAY == 1 ]]; then
  config edgemux-relay $RELAY_PORT $((RELAY_PORT + 1000)) relay
  "$BIN" run --config "$PEERS_WORK/edgemux-relay.yaml" --log-level warning > "$PEERS_WORK/edgemux-relay.log" 2>&1 &
  RELAY_PID=$!
  TARGETS+=(--target edgemux-relay=$RELAY_PORT)
fi
FLOOR_PID=""
H2FLOOR_PID=""
trap 'kill $EDGEMUX $RELAY_PID $FLOOR_PID $H2FLOOR_PID 2>/dev/null || true' EXIT
if [[ $FLOOR == 1 ]]; then
  mkdir -p "$PEERS_WORK/bin"
  cc -O2 -o "$PEERS_WORK/bin/bare-tls-relay" Benchmarks/tools/bare-tls-relay.c -lssl -lcrypto
  # bounded: it exits by itself after an hour even if this script is killed
  "$PEERS_WORK/bin/bare-tls-relay" $FLOOR_PORT "$PEERS_WORK/certs/server.pem" "$PEERS_WORK/certs/server.key" 9001 9002 3600 \
    > "$PEERS_WORK/relay-floor.log" 2>&1 &
  FLOOR_PID=$!
  TARGETS+=(--target relay-floor=$FLOOR_PORT)
fi

if [[ $H2FLOOR == 1 ]]; then
  mkdir -p "$PEERS_WORK/bin"
  cc -O2 -o "$PEERS_WORK/bin/bare-h2-proxy" Benchmarks/tools/bare-h2-proxy.c -lssl -lcrypto -lnghttp2
  "$PEERS_WORK/bin/bare-h2-proxy" $H2FLOOR_PORT "$PEERS_WORK/certs/server.pem" "$PEERS_WORK/certs/server.key" $H2FLOOR_BACKEND \
    > "$PEERS_WORK/h2-floor.log" 2>&1 &
  H2FLOOR_PID=$!
  TARGETS+=(--target h2-floor=$H2FLOOR_PORT)
fi
for p in $PORT $([[ $RELAY == 1 ]] && echo $RELAY_PORT) $([[ $FLOOR == 1 ]] && echo $FLOOR_PORT) $([[ $H2FLOOR == 1 ]] && echo $H2FLOOR_PORT); do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.05; done
done
"$PEERS/run.sh" "${TARGETS[@]}" "$@"
echo
echo "Backend connections opened during the run (edgemux_backend_connections_opened_total):"
opened() {  # name port
  printf '  %-14s %s\n' "$1" "$(curl -s "http://127.0.0.1:$(($2 + 1000))/metrics" | sed -n 's/^edgemux_backend_connections_opened_total{backend="peers"} //p')"
}
opened edgemux $PORT
if [[ $RELAY == 1 ]]; then opened edgemux-relay $RELAY_PORT; fi

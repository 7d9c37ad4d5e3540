#!/usr/bin/env bash
# edgemux beside HAProxy, nginx and nghttpx in one run of ../shared/bench/peers/run.sh: builds
# edgemux (release), starts it with one worker on 127.0.0.1:8446 with the harness's certificates
# and routing contract (h2 -> h2c :9002, http/1.1 -> :9001), runs the harness (which pins it to
# CPU 1 like the peers), and stops it. Beside them runs the relay floor (tools/bare-tls-relay.c on
# :8447: TLS termination and a byte relay in C with edgemux's system calls and nothing else; FLOOR=0
# leaves it out). Extra arguments go to run.sh (e.g. --quick, --peers none).
# Needs: apt-get install haproxy nginx nghttp2-client nghttp2-proxy wrk curl gcc libssl-dev
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS:-$(pwd)/../shared/bench/peers}
export PEERS_WORK=${PEERS_WORK:-/tmp/bench-peers}
PORT=${PORT:-8446}
FLOOR=${FLOOR:-1}
FLOOR_PORT=${FLOOR_PORT:-8447}
"$PEERS/gen-certs.sh" >/dev/null
swift build -c release --product edgemux >/dev/null
BIN="$(swift build -c release --show-bin-path)/edgemux"
mkdir -p "$PEERS_WORK"
cat > "$PEERS_WORK/edgemux.yaml" <<YAML
workers: 1
listeners:
  - name: bench
    listen: 127.0.0.1:$PORT
    tls:
      certificates:
        - { cert: $PEERS_WORK/certs/server.pem, key: $PEERS_WORK/certs/server.key }
      alpn: [h2, http/1.1]
    routes:
      - name: web
        backend: peers
backends:
  peers:
    endpoints: { http1: [127.0.0.1:9001], h2c: [127.0.0.1:9002] }
YAML
"$BIN" run --config "$PEERS_WORK/edgemux.yaml" --log-level warning > "$PEERS_WORK/edgemux.log" 2>&1 &
EDGEMUX=$!
FLOOR_PID=""
trap 'kill $EDGEMUX $FLOOR_PID 2>/dev/null || true' EXIT
TARGETS=(--target edgemux=$PORT)
if [[ $FLOOR == 1 ]]; then
  mkdir -p "$PEERS_WORK/bin"
  cc -O2 -o "$PEERS_WORK/bin/bare-tls-relay" Benchmarks/tools/bare-tls-relay.c -lssl -lcrypto
  # bounded: it exits by itself after an hour even if this script is killed
  "$PEERS_WORK/bin/bare-tls-relay" $FLOOR_PORT "$PEERS_WORK/certs/server.pem" "$PEERS_WORK/certs/server.key" 9001 9002 3600 \
    > "$PEERS_WORK/relay-floor.log" 2>&1 &
  FLOOR_PID=$!
  TARGETS+=(--target relay-floor=$FLOOR_PORT)
fi
for p in $PORT $([[ $FLOOR == 1 ]] && echo $FLOOR_PORT); do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.05; done
done
"$PEERS/run.sh" "${TARGETS[@]}" "$@"

#!/usr/bin/env bash
# edgemux beside HAProxy, nginx and nghttpx in one run of ../shared/bench/peers/run.sh: builds
# edgemux (release), starts it with one worker on 127.0.0.1:8446 with the harness's certificates
# and routing contract (h2 -> h2c :9002, http/1.1 -> :9001), runs the harness (which pins it to
# CPU 1 like the peers), and stops it. Extra arguments go to run.sh (e.g. --quick, --peers none).
# Needs: apt-get install haproxy nginx nghttp2-client nghttp2-proxy wrk curl gcc libssl-dev
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS:-$(pwd)/../shared/bench/peers}
export PEERS_WORK=${PEERS_WORK:-/tmp/bench-peers}
PORT=${PORT:-8446}
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
trap 'kill $EDGEMUX 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
"$PEERS/run.sh" --target edgemux=$PORT "$@"

#!/usr/bin/env bash
# Backend connections for many gRPC clients: CLIENTS (default 2,000) TLS connections from h2load,
# all open at once, each making one unary gRPC call (test.Svc/Unary, a 5-byte message) through
# edgemux to one grpcio backend (Tests/IntegrationTests/Peers/h2peers.py grpc-named). Run once
# with the gRPC route in request mode and once in relay mode; prints how many backend connections
# edgemux opened for them (edgemux_backend_connections_opened_total) and how many calls succeeded.
# A relay opens one per client, as HAProxy and nginx do; request mode multiplexes the calls onto
# HTTP/2 sessions (at most 256 streams each). Bounded: each h2load run stops after 60 s.
# Needs: apt-get install nghttp2-client python3-grpcio curl openssl
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-2000}
PORT=${PORT:-8449}
ADMIN=${ADMIN:-9449}
WORK=$(mktemp -d /tmp/edgemux-grpc-conns.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
bash Certs/gen-test-certs.sh "$WORK/certs" >/dev/null
swift build -c release --product edgemux >/dev/null
BIN="$(swift build -c release --show-bin-path)/edgemux"
/usr/bin/python3 Tests/IntegrationTests/Peers/h2peers.py grpc-named --port 0 --name b --log "$WORK/grpc.log" --max-seconds 600 > "$WORK/grpc.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^ready ' "$WORK/grpc.out" && break; sleep 0.1; done
GRPC_PORT=$(sed -n 's/^ready //p' "$WORK/grpc.out")
[[ -n "$GRPC_PORT" ]] || { echo "the gRPC backend did not start: $(cat "$WORK/grpc.out")" >&2; exit 1; }
# One gRPC message: flag 0, 4-byte length, "hello".
printf '\x00\x00\x00\x00\x05hello' > "$WORK/body"

for mode in request relay; do
  cat > "$WORK/$mode.yaml" <<YAML
workers: 1
admin:
  listen: 127.0.0.1:$ADMIN
listeners:
  - name: bench
    listen: 127.0.0.1:$PORT
    tls:
      certificates:
        - { cert: $WORK/certs/localhost.pem, key: $WORK/certs/localhost.key }
      alpn: [h2]
    routes:
      - name: agents
        match: { alpn: h2, content_type: application/grpc }
        backend: grpc
        mode: $mode
backends:
  grpc:
    protocol: h2c
    endpoints: ["127.0.0.1:$GRPC_PORT"]
YAML
  "$BIN" run --config "$WORK/$mode.yaml" --log-level warning > "$WORK/$mode.log" 2>&1 &
  EDGEMUX=$!
  PIDS+=($EDGEMUX)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
  timeout 90 h2load -t1 -c "$CLIENTS" -n "$CLIENTS" -m1 -T 60 -d "$WORK/body" \
    -H 'content-type: application/grpc' -H 'te: trailers' "https://127.0.0.1:$PORT/test.Svc/Unary" > "$WORK/$mode.h2load" 2>&1 || true
  opened=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | sed -n 's/^edgemux_backend_connections_opened_total{backend="grpc"} //p')
  printf '%-8s %s clients: %s backend connections opened; h2load: %s\n' "$mode" "$CLIENTS" "${opened:-0}" \
    "$(grep -E '^requests:' "$WORK/$mode.h2load" | sed 's/requests: //')"
  kill "$EDGEMUX"; wait "$EDGEMUX" 2>/dev/null || true
done

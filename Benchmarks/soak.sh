#!/usr/bin/env bash
# Soak test: edgemux (release build) under churn, reloads, misbehaving clients and backends for
# MINUTES (default 10); fails if a well-behaved request failed or descriptors or RSS grow.
#   Benchmarks/soak.sh [MINUTES]
# Needs: apt-get install nghttp2-client nghttp2-server python3-grpcio (h2load, nghttpd, grpc).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
certs=$(mktemp -d /tmp/edgemux-soak-certs-XXXXXX)
trap 'rm -rf "$certs"' EXIT
bash Certs/gen-test-certs.sh "$certs" >/dev/null
swift build -c release --product edgemux >/dev/null
/usr/bin/python3 Benchmarks/soak.py --edgemux "$(swift build -c release --show-bin-path)/edgemux" --certs "$certs" --minutes "$minutes"

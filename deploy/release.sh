#!/usr/bin/env bash
# Build writ's release: for each architecture, a tarball
# DIST/writ_<version>_linux_<arch>.tar.gz holding writ, writ-exec and
# writ-spire-plugin (static: no cgo), the systemd units, the example
# broker configuration and the README; then DIST/SHA256SUMS over the
# tarballs. Reproducible: the same tree gives byte-identical files
# (-trimpath, no VCS stamp and no build ID in the binaries, the version
# stamped by -ldflags; tar entries sorted, owned by 0:0 and dated at the
# commit; gzip without a name or time). `make release-check` proves it.
#
# Usage: deploy/release.sh VERSION DIST [ARCH...]   (default: amd64 arm64)
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:?usage: release.sh VERSION DIST [ARCH...]}
dist=${2:?usage: release.sh VERSION DIST [ARCH...]}
shift 2
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64)
case "$version" in
  */* | *" "* | "") echo "release: version \"$version\" cannot name a file" >&2; exit 1 ;;
esac
GO=${GO:-go}
# The commit's time dates every file in the tarballs (SOURCE_DATE_EPOCH
# when set, as reproducible-builds.org defines it).
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
# The same flags as deploy/Dockerfile's build line.
ldflags="-s -w -buildid= -X main.version=$version"

mkdir -p "$dist"
dist=$(cd "$dist" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

tarballs=()
for arch in "${arches[@]}"; do
  name="writ_${version#v}_linux_${arch}"
  dir="$work/$name"
  mkdir -p "$dir/systemd"
  for cmd in writ writ-exec writ-spire-plugin; do
    echo "release: $name/$cmd" >&2
    CGO_ENABLED=0 GOOS=linux GOARCH="$arch" "$GO" build -trimpath -buildvcs=false -ldflags "$ldflags" \
      -o "$dir/$cmd" "./cmd/$cmd"
  done
  cp deploy/systemd/*.service "$dir/systemd/"
  cp deploy/broker.yaml README.md "$dir/"
  chmod 0755 "$dir" "$dir/systemd" "$dir/writ" "$dir/writ-exec" "$dir/writ-spire-plugin"
  chmod 0644 "$dir/systemd/"*.service "$dir/broker.yaml" "$dir/README.md"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" --format=gnu \
    -C "$work" -cf - "$name" | gzip -9 -n > "$dist/$name.tar.gz"
  tarballs+=("$name.tar.gz")
done
(cd "$dist" && sha256sum "${tarballs[@]}" > SHA256SUMS)
echo "release: $dist/SHA256SUMS" >&2
cat "$dist/SHA256SUMS"

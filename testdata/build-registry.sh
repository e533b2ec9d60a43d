#!/usr/bin/env bash
# Builds the container registry (CNCF distribution) used by the private-
# image pull tests from the Go module proxy and caches it outside the
# repository, keyed by version. Reused when present.
#
#   testdata/build-registry.sh            # prints the binary's path
#   REGISTRY_CACHE=/elsewhere testdata/build-registry.sh
#
# The tests start it on a loopback port with htpasswd authentication and
# filesystem storage in a temporary directory; the Docker engine pulls from
# it as from any registry (127.0.0.0/8 is insecure-allowed by default).
set -euo pipefail

VERSION="${REGISTRY_VERSION:-3.1.2}"
CACHE="${REGISTRY_CACHE:-/var/cache/airlock}"
OUT="$CACHE/registry-$VERSION/registry"

if [[ -x "$OUT" ]] && "$OUT" --version 2>/dev/null | grep -q "v$VERSION"; then
	echo "$OUT"
	exit 0
fi

export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
export GOTOOLCHAIN=local

work="$(mktemp -d "${TMPDIR:-/var/tmp}/airlock-registry-build.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

retry() { # the module proxy sometimes times out: three tries
	local i
	for i in 1 2 3; do
		"$@" && return 0
		echo "build-registry: '$*' failed (try $i of 3)" >&2
		sleep $((i * 5))
	done
	return 1
}

cd "$work"
go mod init airlock-registry-build >/dev/null 2>&1
retry go get "github.com/distribution/distribution/v3@v$VERSION" >&2
retry nice -n 10 go build -trimpath \
	-ldflags "-X github.com/distribution/distribution/v3/version.version=v$VERSION" \
	-o "$work/registry.bin" github.com/distribution/distribution/v3/cmd/registry

mkdir -p "$(dirname "$OUT")"
mv "$work/registry.bin" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
"$OUT" --version >&2
echo "$OUT"

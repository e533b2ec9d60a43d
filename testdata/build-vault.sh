#!/usr/bin/env bash
# Builds the Vault server used by the real-Vault tests from the Go module proxy
# and caches it outside the repository, keyed by version. Reused when present.
#
#   testdata/build-vault.sh            # prints the binary's path
#   VAULT_CACHE=/elsewhere testdata/build-vault.sh
#
# Vault v1.14.2 is the last MPL-2.0 line. Its module zip lacks the nested
# api/ and sdk/ modules its go.mod replaces with local paths, so the replaces
# are dropped and the published versions used (sdk v0.9.2). That sdk refuses,
# at mount time, a path that declares a create operation without an existence
# check; the OSS managed-keys paths do exactly that (the check lives in the
# enterprise build), so that one check is relaxed for managed-keys/ paths.
# The build is niced and runs one package at a time: the machine is shared.
set -euo pipefail

VERSION="${VAULT_VERSION:-1.14.2}"
SDK_VERSION="${VAULT_SDK_VERSION:-0.9.2}"
CACHE="${VAULT_CACHE:-/var/cache/airlock}"
OUT="$CACHE/vault-$VERSION/vault"

if [[ -x "$OUT" ]] && "$OUT" version 2>/dev/null | grep -q "Vault v$VERSION"; then
	echo "$OUT"
	exit 0
fi

export GOFLAGS="-mod=mod -p=1 -buildvcs=false"
export CGO_ENABLED=0
export GOTOOLCHAIN=local

work="$(mktemp -d "${TMPDIR:-/var/tmp}/airlock-vault-build.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

retry() { # the module proxy sometimes times out: three tries
	local i
	for i in 1 2 3; do
		"$@" && return 0
		echo "build-vault: '$*' failed (try $i of 3)" >&2
		sleep $((i * 5))
	done
	return 1
}

moddir() { # module@version -> its directory in the module cache
	(cd "$work" && go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
}

vault_src="$(retry moddir "github.com/hashicorp/vault@v$VERSION")"
sdk_src="$(retry moddir "github.com/hashicorp/vault/sdk@v$SDK_VERSION")"
[[ -d "$vault_src" && -d "$sdk_src" ]] || { echo "build-vault: module download failed" >&2; exit 1; }

cp -r "$vault_src" "$work/vault"
cp -r "$sdk_src" "$work/sdk"
chmod -R u+w "$work/vault" "$work/sdk"

backend="$work/sdk/framework/backend.go"
grep -q '		if p.ExistenceCheck == nil {' "$backend" || { echo "build-vault: sdk existence check not found" >&2; exit 1; }
sed -i 's|^\t\tif p.ExistenceCheck == nil {$|\t\tif p.ExistenceCheck == nil \&\& !strings.HasPrefix(p.Pattern, "managed-keys/") {|' "$backend"

cd "$work/vault"
for m in api api/auth/approle api/auth/kubernetes api/auth/userpass sdk; do
	go mod edit -dropreplace="github.com/hashicorp/vault/$m"
done
go mod edit -require="github.com/hashicorp/vault/sdk@v$SDK_VERSION" \
	-replace="github.com/hashicorp/vault/sdk=../sdk"

retry nice -n 10 go build -trimpath \
	-ldflags "-checklinkname=0 -X github.com/hashicorp/vault/version.GitCommit=module-proxy" \
	-o "$work/vault.bin" .

mkdir -p "$(dirname "$OUT")"
mv "$work/vault.bin" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
"$OUT" version >&2
echo "$OUT"

#!/usr/bin/env bash
# Builds the local test image airlock-test:busybox with `docker import` from
# a root filesystem made of Debian's busybox-static plus Airlock's static Go
# test helpers (internal/testenv/cmd/*). No image registry is needed.
set -euo pipefail

image=${1:-airlock-test:busybox}
top=$(cd "$(dirname "$0")/.." && pwd)
busybox=${BUSYBOX:-/bin/busybox}

if ! "$busybox" --list-full >/dev/null 2>&1; then
	echo "mkimage: $busybox is not a static busybox; install Debian's busybox-static" >&2
	exit 1
fi
if [[ $(LC_ALL=C ldd "$busybox" 2>&1) != *"not a dynamic executable"* ]]; then
	echo "mkimage: $busybox is dynamically linked; install Debian's busybox-static" >&2
	exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,tmp,root,home/build,builds,proc,sys,dev,run}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
	[[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
done
cat >"$root/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
build:x:1000:1000:build:/home/build:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat >"$root/etc/group" <<'GR'
root:x:0:
build:x:1000:
nogroup:x:65534:
GR
: >"$root/etc/resolv.conf"
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
chown 1000:1000 "$root/home/build"
chmod 0777 "$root/builds"

# Static Go helpers the tests run inside jobs.
if compgen -G "$top/internal/testenv/cmd/*/" >/dev/null; then
	(cd "$top" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$root/usr/local/bin/" ./internal/testenv/cmd/...)
fi

tar --numeric-owner -C "$root" -c . | docker import \
	--change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin' \
	--change 'CMD ["/bin/sh"]' \
	--message 'airlock test image: Debian busybox-static and static Go helpers' \
	- "$image" >/dev/null
echo "built $image"

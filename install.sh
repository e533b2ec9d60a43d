#!/usr/bin/env bash
# Installs Airlock on a Debian or Ubuntu build host and runs the demo job:
#   - the Debian packages it needs (iptables, iproute2, nftables, busybox-static; Docker
#     only when no engine answers),
#   - the airlock binary in /usr/local/bin (built from this checkout),
#   - /etc/airlock and /var/lib/airlock,
#   - the local test image (no registry needed),
#   - the systemd unit airlock.service (enabled where systemd runs),
# then runs testdata/jobs/demo.yml with `airlock exec`. With AIRLOCK_TEST_DEPS=1
# it also installs etcd-server, which the fleet tests run (make test).
# Re-running it is safe: nothing that exists is overwritten.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$PATH:/usr/local/go/bin"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (Airlock manages network namespaces and iptables): sudo ./install.sh"
command -v apt-get >/dev/null || die "this installer supports Debian and Ubuntu (apt-get not found)"

need=()
for p in iptables iproute2 nftables busybox-static ca-certificates git make systemd; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# A host that will run the test suite (make test) also needs an etcd server
# binary for the fleet tests; they start their own members on loopback.
if [[ ${AIRLOCK_TEST_DEPS:-} == 1 ]]; then
	for p in etcd-server nodejs; do
		dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
	done
fi
if ! docker info >/dev/null 2>&1; then
	say "no Docker engine answers: installing Debian's docker.io"
	need+=(docker.io)
fi
if ((${#need[@]})); then
	say "installing packages: ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if ! docker info >/dev/null 2>&1; then
	command -v systemctl >/dev/null && systemctl enable --now docker >/dev/null 2>&1 || true
	docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info); start it and re-run"
fi

command -v go >/dev/null || die "Go 1.26 or newer is needed to build Airlock (not found on PATH or in /usr/local/go/bin)"
say "building airlock ($(go version | awk '{print $3}'))"
make -s build
install -D -m 0755 bin/airlock /usr/local/bin/airlock
install -D -m 0755 bin/airlock-stepd /usr/local/bin/airlock-stepd

say "creating /etc/airlock and /var/lib/airlock"
install -d -m 0755 /etc/airlock
install -d -m 0700 /var/lib/airlock
if [[ ! -e /etc/airlock/config.toml ]]; then
	install -m 0600 testdata/config.example.toml /etc/airlock/config.toml
fi

say "building the local test image"
make -s testimage

say "checking the host: airlock doctor"
/usr/local/bin/airlock doctor || die "airlock doctor reported FAIL lines above; fix them and re-run"

# The service runs `airlock run` (the GitLab agent). It is enabled here and
# started once a runner is registered: airlock register --url ... --token glrt-...
say "installing the systemd unit: airlock service install --enable"
/usr/local/bin/airlock service install --enable

say "running the demo job: airlock exec testdata/jobs/demo.yml"
/usr/local/bin/airlock exec testdata/jobs/demo.yml
say "done: airlock is installed (airlock --help)"

#!/usr/bin/env bash
# Measures `airlock exec` of a one-step `true` job with the Docker executor
# and with the containerd executor against `docker run --rm --network none`
# of the same image running `true`, interleaved, and prints the median of
# each and their ratios to docker run. Nothing is pulled from a registry:
# the image must be local (containerd imports it from Docker's store).
# Set EXECUTORS="docker" to skip containerd.
set -euo pipefail
bin=${1:-bin/airlock}
image=${2:-airlock-test:busybox}
runs=${RUNS:-11}
executors=${EXECUTORS:-docker containerd}

state=$(mktemp -d)
job=$(mktemp --suffix .yml)
ns=airlock-bench-$$
ctrsock=${AIRLOCK_CONTAINERD:-}
if [[ -z $ctrsock ]]; then
	ctrsock=/run/containerd/containerd.sock
	[[ -S $ctrsock ]] || ctrsock=/var/run/docker/containerd/containerd.sock
fi
cleanup() {
	rm -rf "$state" "$job"
	if [[ $executors == *containerd* ]] && command -v ctr >/dev/null; then
		ctr -a "$ctrsock" -n "$ns" images ls -q 2>/dev/null | xargs -r ctr -a "$ctrsock" -n "$ns" images rm --sync >/dev/null 2>&1 || true
		ctr -a "$ctrsock" namespaces rm "$ns" >/dev/null 2>&1 || true
		for d in /sys/fs/cgroup/*/"$ns" /sys/fs/cgroup/"$ns"; do [[ -d $d ]] && rmdir "$d" 2>/dev/null || true; done
	fi
}
trap cleanup EXIT
printf 'image: %s\nscript:\n  - "true"\n' "$image" >"$job"
cat >"$state/config.toml" <<EOF
[gateway]
hosts_only = true
[containerd]
address = "$ctrsock"
namespace = "$ns"
EOF

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ax() { "$bin" exec --config "$state/config.toml" --state-dir "$state/s" --pull-policy never --executor "$1" "$job" >/dev/null; }

# Warm up every path once (containerd imports the image here).
for x in $executors; do ax "$x"; done
docker run --rm --pull never --network none "$image" true

declare -A ms
dockerrun=()
for ((i = 0; i < runs; i++)); do
	t0=$(now); docker run --rm --pull never --network none "$image" true; t1=$(now)
	dockerrun+=($(((t1 - t0) / 1000000)))
	for x in $executors; do
		t0=$(now); ax "$x"; t1=$(now)
		ms[$x]+="$(((t1 - t0) / 1000000)) "
	done
done
d=$(printf '%s\n' "${dockerrun[@]}" | median)
line="exec-vs-docker-run: runs=$runs docker_run_median_ms=$d"
for x in $executors; do
	a=$(printf '%s\n' ${ms[$x]} | median)
	line+=" airlock_exec_${x}_median_ms=$a ratio_${x}=$(awk -v a="$a" -v d="$d" 'BEGIN{printf "%.2f", a/d}')"
done
echo "$line"

#!/usr/bin/env bash
# Measures `airlock exec` of a one-step `true` job against
# `docker run --rm --network none` of the same image running `true`,
# interleaved, and prints the median of each and their ratio.
set -euo pipefail
bin=${1:-bin/airlock}
image=${2:-airlock-test:busybox}
runs=${RUNS:-11}

state=$(mktemp -d)
job=$(mktemp --suffix .yml)
trap 'rm -rf "$state" "$job"' EXIT
printf 'image: %s\nscript:\n  - "true"\n' "$image" >"$job"

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# Warm up both paths once.
"$bin" exec --state-dir "$state" --pull-policy never "$job" >/dev/null
docker run --rm --network none "$image" true

airlock=() dockerrun=()
for ((i = 0; i < runs; i++)); do
	t0=$(now); "$bin" exec --state-dir "$state" --pull-policy never "$job" >/dev/null; t1=$(now)
	docker run --rm --network none "$image" true; t2=$(now)
	airlock+=($(((t1 - t0) / 1000000))) dockerrun+=($(((t2 - t1) / 1000000)))
done
a=$(printf '%s\n' "${airlock[@]}" | median)
d=$(printf '%s\n' "${dockerrun[@]}" | median)
echo "exec-vs-docker-run: runs=$runs airlock_exec_median_ms=$a docker_run_median_ms=$d ratio=$(awk -v a="$a" -v d="$d" 'BEGIN{printf "%.2f", a/d}')"

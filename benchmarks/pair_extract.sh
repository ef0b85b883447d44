#!/bin/bash
# Two identical `fne extract` commands into one new cache, the second started 1.5 s after the
# first: how long both take, how many rows each computed, whether the store holds duplicates.
# Usage (from the project root): bash benchmarks/pair_extract.sh [TREE]
#   TREE: the fne checkout to run (by PYTHONPATH; default: this one). PYTHON, DATA as below.
set -u
tree=${1:-$PWD}
cache=$(mktemp -d)
run="env PYTHONPATH=$tree ${PYTHON:-python} -m fne.cli"
args="extract ${DATA:-../shared/datasets/pets37} --arch efficientnet_lite0 --weights random --cache $cache --no-progress --workers 1"
t0=$(date +%s.%N)
$run $args > "$cache.1.out" 2>&1 &
first=$!
sleep 1.5
$run $args > "$cache.2.out" 2>&1
wait $first
echo "both done in $(echo "$(date +%s.%N) - $t0" | bc) s"
echo "first:  $(grep -h 'images (' "$cache.1.out")"
echo "second: $(grep -h 'images (' "$cache.2.out")$(grep -q 'waiting for it' "$cache.2.out" && echo ' (waited)')"
$run cache verify --cache "$cache" | tail -1
rm -rf "$cache" "$cache.1.out" "$cache.2.out"

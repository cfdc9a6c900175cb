#!/bin/sh
# `shardps datagen` twice with the same flags gives byte-identical files; another seed gives other
# bytes; a bad flag exits 2 with a message naming it and writes nothing.
# usage: datagen_repeat.sh SHARDPS WORKDIR
set -eu
shardps=$1
work=$2
rm -rf "$work"
mkdir -p "$work"
flags="--feature-bits 24 --nnz 30 --train-rows 20000 --test-rows 5000 --values real"
"$shardps" datagen --out "$work/a" --seed 11 $flags
"$shardps" datagen --out "$work/b" --seed 11 $flags
"$shardps" datagen --out "$work/c" --seed 12 $flags
for f in train.svm test.svm meta.json; do
  cmp "$work/a/$f" "$work/b/$f"
done
if cmp -s "$work/a/train.svm" "$work/c/train.svm"; then
  echo "FAIL: seeds 11 and 12 gave the same train.svm" >&2
  exit 1
fi
rc=0
"$shardps" datagen --out "$work/bad" --nnz 0 2>"$work/bad.err" || rc=$?
if [ "$rc" -ne 2 ] || ! grep -q -- "--nnz must be in" "$work/bad.err" || [ -e "$work/bad" ]; then
  echo "FAIL: --nnz 0 gave exit $rc, stderr: $(cat "$work/bad.err")" >&2
  exit 1
fi
rc=0
"$shardps" datagen --out "$work/a" --seed 11 $flags 2>"$work/again.err" || rc=$?
if [ "$rc" -ne 1 ] || ! grep -q -- "exists; pass --force" "$work/again.err"; then
  echo "FAIL: rerun into a full directory gave exit $rc, stderr: $(cat "$work/again.err")" >&2
  exit 1
fi
cmp "$work/a/train.svm" "$work/b/train.svm"
echo "datagen_repeat: OK"

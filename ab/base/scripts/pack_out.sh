#!/usr/bin/env bash
# On a lent GPU machine, last in a device call: packs everything under $OUT into one archive,
# $OUT/out.tgz (a device call brings back a few files only; logs and benchmark JSON of a call that
# builds, tests and times several trees are many more). Unpack here with
#   tar -xzf <files_at>/out.tgz -C <dir>
set -euo pipefail
out=${OUT:?OUT is not set}
archive=$(mktemp --suffix=.tgz)
tar -C "$out" -czf "$archive" .
find "$out" -mindepth 1 -delete
mv "$archive" "$out/out.tgz"
echo "packed $(tar -tzf "$out/out.tgz" | grep -vc '/$') files into $out/out.tgz"

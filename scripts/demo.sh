#!/usr/bin/env bash
# Sets everything up, then runs the main job on the bundled sample model:
# convert -> quantize (int8, int4 sym, int4 asym) -> verify (perplexity, KLD vs f32) -> generate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
T=build/app/tessera
SRC=${1:-../shared/fixtures/stories260K/hf}
TEXT=${TEXT:-../shared/fixtures/text/tinystories_valid_sample.txt}
CTX=${CTX:-128}
OUT=${OUT:-out/demo}
mkdir -p "$OUT"
$T convert "$SRC" -o "$OUT/f32" --force
$T quantize "$OUT/f32" -o "$OUT/int8" --type int8 --force
$T quantize "$OUT/f32" -o "$OUT/int4" --type int4 --group 32 --force
$T quantize "$OUT/f32" -o "$OUT/int4-asym" --type int4 --group 32 --asym --force
for p in f32 int8 int4 int4-asym; do
  echo "=== $p: $(du -sh "$OUT/$p" | cut -f1)"
  if [ "$p" = f32 ]; then
    $T verify "$OUT/$p" --text "$TEXT" --ctx "$CTX"
  else
    $T verify "$OUT/$p" --text "$TEXT" --ctx "$CTX" --base "$OUT/f32"
  fi
  $T run "$OUT/$p" -p "Once upon a time" -n 96 --temp 0
done

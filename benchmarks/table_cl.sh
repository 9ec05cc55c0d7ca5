#!/usr/bin/env bash
# docs/results-cl.md's SplitDigits class-incremental tables: B2-Inc2 and B4-Inc2, every strategy, class orders
# 1993-1995 (the iCaRL / PyCIL seeds), one architecture (EfficientNet-Lite0, 32 px) from three starts:
#   random init | ImageNet (the embedded weights) | ImageNet + premonition pretraining
# The premonition backbone: the LLM's classes for the realm "handwritten symbols", drawn by whatever
# generator `render --model auto` finds (here the built-in tiny-lcm: noise images; import a real model
# and re-run for a meaningful row), pretraining the ImageNet backbone (LoRA off, 3 epochs).
# Usage: benchmarks/table_cl.sh RUNS_DIR   (re-running resumes; each run folder is one `augur cl` run)
#        PROTOCOLS="2:2" ORDERS=1993 benchmarks/table_cl.sh RUNS_DIR   (a part of the table)
set -euo pipefail
R=${1:-runs/cl-table}
A=${AUGUR:-augur}
EPOCHS=${EPOCHS:-5}
STRATEGIES=${STRATEGIES:-"naive replay lwf ewc icarl ncm ranpac fsa der derpp gdumb"}
PROTOCOLS=${PROTOCOLS:-"2:2 4:2"}   # initial:increment
ORDERS=${ORDERS:-"1993 1994 1995"}
COMMON=(--data digits --backbone efficientnet_lite0 --image-size 32 --epochs "$EPOCHS" --quiet)

[ -f "$R/premonition/prompts/prompts.jsonl" ] || $A extrapolate realm "handwritten symbols" --groups 3 \
  --classes-per-group 4 --quiet --out "$R/premonition/prompts"
$A render "$R/premonition/prompts/prompts.jsonl" --images-per-prompt 8 --quiet --out "$R/premonition/images"
$A pretrain --data "$R/premonition/images" --backbone efficientnet_lite0 --weights imagenet --image-size 32 \
  --epochs 3 --quiet --out "$R/premonition-backbone"

for proto in $PROTOCOLS; do
  set -- ${proto/:/ }
  P="B$1-Inc$2"
  for order in $ORDERS; do
    for s in $STRATEGIES; do
      for w in none imagenet premonition; do
        weights=$w
        [ "$w" = premonition ] && weights="$R/premonition-backbone"
        $A cl --strategy "$s" --weights "$weights" --initial-classes "$1" --increment "$2" \
          --class-order "$order" "${COMMON[@]}" --out "$R/$P/$w/$s-$order" > /dev/null
      done
    done
  done
  $A cl collect "$R/$P" > "$R/table-$P.md"
done
cat "$R"/table-*.md

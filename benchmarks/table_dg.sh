#!/usr/bin/env bash
# The README's RotatedDigits DG table: DomainBed's protocol (one minibatch per training environment per
# step, 80/20 splits), training-domain validation and the test-domain oracle (both from the same runs;
# leave-one-out would train 15 more runs per trial), 3 trials, 7 algorithms, from random init (resnet18,
# 16 px) and from the ImageNet EfficientNet-Lite0 (32 px); plus ERM with the rendered domains added both ways.
# Usage: benchmarks/table_dg.sh RUNS_DIR   (re-running resumes; each run folder is one `augur dg` sweep)
set -euo pipefail
R=${1:-runs/dg-table}
A=${AUGUR:-augur}
COMMON=(--trials 3 --steps 100 --checkpoint-freq 50 --batch-size 8 --selection training-domain,oracle --quiet)
ALGORITHMS=${ALGORITHMS:-"ERM CORAL GroupDRO Mixup IRM VREx MMD"}
for alg in $ALGORITHMS; do
  $A dg --algorithm $alg --image-size 16 "${COMMON[@]}" --out "$R/random/$alg"
done
# Rendered domains for the ten digit classes (the LLM's domains, drawn by the available generator)
[ -f "$R/synth-prompts/prompts.jsonl" ] || $A extrapolate domains --classes 0,1,2,3,4,5,6,7,8,9 -n 4 --quiet \
  --out "$R/synth-prompts"
$A render "$R/synth-prompts/prompts.jsonl" --images-per-prompt 4 --quiet --out "$R/synth-images"
for envs in per-domain one; do
  $A dg --algorithm ERM --image-size 16 --synthetic "$R/synth-images" --synthetic-envs $envs "${COMMON[@]}" \
        --out "$R/synthetic-$envs"
done
$A dg collect "$R/random" "$R/synthetic-per-domain" "$R/synthetic-one" > "$R/table-random.md"
# The ImageNet rows take ~5x longer per run (EfficientNet-Lite0 at 32 px): last, so the rest is ready first
for alg in $ALGORITHMS; do
  $A dg --algorithm $alg --backbone efficientnet_lite0 --weights imagenet --image-size 32 "${COMMON[@]}" \
        --out "$R/imagenet/$alg"
done
$A dg collect "$R/imagenet" > "$R/table-imagenet.md"

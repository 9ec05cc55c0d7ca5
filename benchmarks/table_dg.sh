#!/usr/bin/env bash
# docs/results-dg.md's RotatedDigits tables: DomainBed's protocol as `augur dg` runs it by default (one minibatch
# per training environment per step, 80/20 splits, no augmentation of the digits, the hyper-parameter regime of the
# network: DomainBed's MNIST-CNN one from random init, its pretrained-ResNet one from ImageNet weights), every
# algorithm and ERM+SWAD, training-domain validation and the test-domain oracle (both from the same runs), 3 trials,
# every test domain. The CPU budget, the same for every row: 200 steps, a checkpoint every 50 (SWAD's valley too),
# 8 images per environment per step.
#   random:   resnet18 from random init, 16 px (lr 1e-3)
#   imagenet: EfficientNet-Lite0 with its ImageNet weights, 32 px (lr 5e-5)
# Usage: benchmarks/table_dg.sh RUNS_DIR [random|imagenet|all]   (re-running resumes; one `augur dg` sweep a folder)
set -euo pipefail
R=${1:-runs/dg-table}
PART=${2:-all}
A=${AUGUR:-augur}
COMMON=(--trials 3 --steps 200 --checkpoint-freq 50 --batch-size 8 --selection training-domain,oracle --quiet)
ALGORITHMS=${ALGORITHMS:-"ERM CORAL MMD GroupDRO Mixup IRM VREx DANN CDANN Fish SelfReg SagNet ERM+SWAD"}
run() {  # run INIT ALGORITHM
  local alg=${2%+SWAD} swad=()
  [ "$2" != "$alg" ] && swad=(--swad)
  if [ "$1" = random ]; then
    $A dg --algorithm "$alg" "${swad[@]}" --image-size 16 "${COMMON[@]}" --out "$R/random/$2"
  else
    $A dg --algorithm "$alg" "${swad[@]}" --backbone efficientnet_lite0 --weights imagenet --image-size 32 \
      "${COMMON[@]}" --out "$R/imagenet/$2"
  fi
}
for init in random imagenet; do
  [ "$PART" = all ] || [ "$PART" = "$init" ] || continue
  for alg in $ALGORITHMS; do run "$init" "$alg"; done
  $A dg collect "$R/$init" > "$R/table-$init.md"
done

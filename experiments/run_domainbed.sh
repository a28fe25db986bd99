#!/usr/bin/env bash
# Leave-one-domain-out grid for a DomainBed set: full precision and 7-bit QT-DoG, 3 seeds, every test domain,
# then the flatness comparison on each held-out domain. Needs the data under DATA_ROOT, a GPU and the ImageNet
# weights of ResNet-50 in torch's hub cache.
#   experiments/run_domainbed.sh experiments/pacs.json "art_painting cartoon photo sketch" DATA_ROOT OUT
set -euo pipefail
config=$1; domains=$2; root=$3; out=${4:-results/domainbed}
mkdir -p "$out"
for d in $domains; do
  for seed in 0 1 2; do
    flatlens train --config "$config" --data-root "$root" --test-domain "$d" --seed "$seed" \
      --out "$out/${d}_q7_s${seed}.pt" --resume
    flatlens train --config "$config" --data-root "$root" --test-domain "$d" --seed "$seed" --bits 32 \
      --out "$out/${d}_fp_s${seed}.pt" --resume
  done
  # method vs method: the three seeds of each configuration are its replicates (Welch over seeds, Holm)
  flatlens compare --group fp "$out/${d}"_fp_s*.pt --group q7 "$out/${d}"_q7_s*.pt --metric all --split both \
    --device cuda --results "$out" --json "$out/compare_${d}.json" --plot "$out/compare_${d}.png"
  flatlens ensemble "$out/${d}"_q7_s*.pt --json "$out/eoq_${d}.json"
done

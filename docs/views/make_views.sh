#!/usr/bin/env bash
# Regenerate the README's views ("Views the other tools draw") and the numbers it quotes from them.
#
#   bash docs/views/make_views.sh RUN          (after `make reproduce`: RUN = results/reproduce)
#
# RUN is a `flatlens reproduce` output folder; the views read its seed-0 models of test domain `printed`,
# RUN/checkpoints/testprinted/{fp32_s0.pt,q2_s0.pt,q7_s0.pt,prefix_s0.state} (CK below). The commands are the
# README's, in its order, with the flatlens CLI only (FLATLENS=... to use another executable than the `flatlens`
# on PATH; the reference views were made with the main job's .venv, torch 2.13.0):
#   interpolate_fp_2bit.{json,png}    flatlens interpolate fp32_s0 -> q2_s0 (the defaults)
#   interpolate_fp_2bit_latent.json   the same with --weights latent
#   interpolate_fp_7bit.json          fp32_s0 -> q7_s0
#   eigen_curves.{json,png}           landscape --kind eigen --directions 3 --range -0.1 0.1 --points 21
#   eigen_second_difference.json      the same at --range -0.01 0.01 --points 3
#   hessian_eig_k3.json               hessian --metric hessian-eig --k 3 (the same samples)
#   trajectory.{json,png}             train --snapshot-every 20 from the seed's prefix (OMP_NUM_THREADS=1, as
#                                     reproduce trains), then landscape --trajectory
#   trajectory_vs_reference.json      interpolate between that retrained model and the reference checkpoint
#                                     (train split; the same loss at every point when the weights are equal)
#   trajectory_2threads_vs_reference.json  the same training with OMP_NUM_THREADS=2 (no snapshots), likewise
#   directions_saved.json, directions_reimported.json, directions_q7.json
#                                     landscape --directions 4 --save-directions D.h5, then --directions-file D.h5
#                                     on the same model and on q7_s0
# Everything is written into a temporary folder first and moved into docs/views (beside this script) at the end,
# so an interrupted run leaves the committed files as they were; checkpoints, snapshots and HDF5 files
# (interpolate.h5, trajectory.h5, D.h5) stay in the temporary folder and are removed with it. Takes minutes
# on 2 cores. tests/test_readme.py checks the numbers the README quotes against the JSON files. Each JSON records
# its command's `seconds`; the README quotes none (the reference views ran on a shared machine).
set -euo pipefail

if [ "$#" -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: bash docs/views/make_views.sh RUN   (RUN: a flatlens reproduce output folder)" >&2
    exit 2
fi
RUN=$1
CK=$(cd "$RUN/checkpoints/testprinted" 2>/dev/null && pwd) || {
    echo "make_views.sh: $RUN/checkpoints/testprinted is missing (run flatlens reproduce first)" >&2; exit 2; }
for f in fp32_s0.pt q2_s0.pt q7_s0.pt prefix_s0.state; do
    [ -f "$CK/$f" ] || { echo "make_views.sh: $CK/$f is missing (run flatlens reproduce first)" >&2; exit 2; }
done
FLATLENS=${FLATLENS:-flatlens}
case $FLATLENS in */*) FLATLENS=$(cd "$(dirname "$FLATLENS")" && pwd)/$(basename "$FLATLENS") ;; esac
VIEWS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"   # every file is written here (the JSON files name them as the README's commands do)
flatlens() { echo "+ flatlens $*" >&2; command "$FLATLENS" "$@"; }

# The line between two models (the README's interpolate commands).
flatlens interpolate "$CK/fp32_s0.pt" "$CK/q2_s0.pt" --json interpolate_fp_2bit.json --plot interpolate_fp_2bit.png \
    --h5 interpolate.h5
flatlens interpolate "$CK/fp32_s0.pt" "$CK/q2_s0.pt" --weights latent --json interpolate_fp_2bit_latent.json
flatlens interpolate "$CK/fp32_s0.pt" "$CK/q7_s0.pt" --json interpolate_fp_7bit.json

# Along the Hessian's eigenvectors, and the eigenvalues on the same samples (train split, 512 samples, seed 0).
flatlens landscape "$CK/fp32_s0.pt" --kind eigen --directions 3 --range -0.1 0.1 --points 21 \
    --json eigen_curves.json --plot eigen_curves.png
flatlens landscape "$CK/fp32_s0.pt" --kind eigen --directions 3 --range -0.01 0.01 --points 3 \
    --json eigen_second_difference.json
flatlens hessian "$CK/fp32_s0.pt" --metric hessian-eig --k 3 --json hessian_eig_k3.json

# A training trajectory: the seed-0 full-precision model retrained from its shared prefix (read, not written)
# with snapshots, one thread as reproduce trains; then the same training with two threads, for comparison.
OMP_NUM_THREADS=1 flatlens train --dataset digits-dg --test-domain printed --image-size 16 --width 16 --steps 400 \
    --quant-start 160 --select last --prefix "$CK/prefix_s0.state" --snapshot-every 20 --out traj.pt
flatlens landscape traj.pt --trajectory traj.pt --points 21 --json trajectory.json --plot trajectory.png \
    --h5 trajectory.h5
flatlens interpolate traj.pt "$CK/fp32_s0.pt" --split train --interp-range 0 1 --interp-points 3 \
    --json trajectory_vs_reference.json
OMP_NUM_THREADS=2 flatlens train --dataset digits-dg --test-domain printed --image-size 16 --width 16 --steps 400 \
    --quant-start 160 --select last --prefix "$CK/prefix_s0.state" --out traj_2threads.pt
flatlens interpolate traj_2threads.pt "$CK/fp32_s0.pt" --split train --interp-range 0 1 --interp-points 3 \
    --json trajectory_2threads_vs_reference.json

# Directions written to a file other tools read, and read back: on the same model, and on its 7-bit partner.
flatlens landscape "$CK/fp32_s0.pt" --directions 4 --save-directions D.h5 --json directions_saved.json
flatlens landscape "$CK/fp32_s0.pt" --directions 4 --directions-file D.h5 --json directions_reimported.json
flatlens landscape "$CK/q7_s0.pt" --directions 4 --directions-file D.h5 --json directions_q7.json

for f in interpolate_fp_2bit interpolate_fp_2bit_latent interpolate_fp_7bit eigen_curves eigen_second_difference \
         hessian_eig_k3 trajectory trajectory_vs_reference trajectory_2threads_vs_reference directions_saved \
         directions_reimported directions_q7; do
    mv "$f.json" "$VIEWS/$f.json"
done
for f in interpolate_fp_2bit eigen_curves trajectory; do
    mv "$f.png" "$VIEWS/$f.png"
done
echo "wrote the views' JSON and PNG files into $VIEWS" >&2

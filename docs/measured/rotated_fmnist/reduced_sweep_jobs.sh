#!/bin/bash
# The reduced run of sweeps/rotated_fmnist.json: job commands from the sweep's dummy launcher (same job ids
# as `harness.sweep launch`), run one at a time with one thread each by run_jobs.sh.
cd /work/main
COMMON='--sweep rotated_fmnist --output_dir results/rotated_fmnist --steps 200 --checkpoint_freq 40 --launcher dummy --skip_confirmation'
EPI='"backbone": "SmallCNN", "n_per_env": 2000, "tasks_per_batch": 2, "support": 25, "query": 25'
DG='"backbone": "SmallCNN", "n_per_env": 2000, "batch_size": 16'
{
python -m harness.sweep launch $COMMON --algorithms ERM CORAL --n_trials 2 --n_hparams 1 --hparams "{$DG}"
python -m harness.sweep launch $COMMON --algorithms IRM --n_trials 2 --n_hparams 1 --hparams "{$DG, \"irm_penalty_anneal_iters\": 50}"
python -m harness.sweep launch $COMMON --algorithms ProtoNet MultiTask --n_trials 2 --n_hparams 1 --hparams "{$EPI}"
python -m harness.sweep launch $COMMON --algorithms SparseShared --n_trials 2 --n_hparams 1 --hparams "{$EPI}"
python -m harness.sweep launch $COMMON --algorithms SparseShared --n_trials 1 --n_hparams 3 --n_hparams_from 1 --hparams "{$EPI, \"lr\": 0.001}"
} | grep "harness.train"

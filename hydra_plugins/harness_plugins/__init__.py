"""Hydra plugins of the decoding harness: ``hydra/launcher=fused``, ``hydra/launcher=fused_slurm``
and ``fused_submitit_local``, and ``hydra/sweeper=union``. Hydra imports every module here when
it scans for plugins: nothing here imports torch."""

"""Hydra plugins of the decoding harness: ``hydra/launcher=fused`` and ``hydra/sweeper=union``.
Hydra imports every module here when it scans for plugins: nothing here imports torch."""

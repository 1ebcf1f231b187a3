"""Training: the one loop (``Trainer``), checkpoints, and the offline-training entry point."""

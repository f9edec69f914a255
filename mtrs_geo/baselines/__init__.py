"""Classic baselines that need no training."""

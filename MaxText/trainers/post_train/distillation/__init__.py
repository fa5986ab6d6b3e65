"""Upstream MaxText's module paths for its post-training commands (thin: they run MaxText.training.launch)."""

"""Training: state and optimizer, the pure step, checkpoints, metrics, pre-flight checks and the Trainer loop."""

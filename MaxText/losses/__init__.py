"""Loss numerics, float32 whatever the model dtype: cross-entropy, token chunking, teacher targets,
divergences and feature distances."""

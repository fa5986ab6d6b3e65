"""The device mesh and the logical-to-mesh axis rules (below the model: layers place activations with them)."""

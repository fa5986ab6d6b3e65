"""Generation: sampling rules and the KV-cached generation loop (model -> inference -> distill)."""

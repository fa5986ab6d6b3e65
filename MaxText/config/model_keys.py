"""The keys that describe a model's architecture and numerics (shared by the loader and the views)."""

# Keys that describe a model's architecture and numerics: the teacher has its own values for these.
MODEL_KEYS = (
  "vocab_size",
  "emb_dim",
  "num_decoder_layers",
  "num_query_heads",
  "num_kv_heads",
  "head_dim",
  "mlp_dim",
  "normalization_layer_epsilon",
  "rope_theta",
  "rope_scaling_factor",
  "rope_low_freq_factor",
  "rope_high_freq_factor",
  "rope_original_max_position",
  "use_qk_norm",
  "use_qkv_bias",
  "logits_via_embedding",
  "init_std",
  "weight_dtype",
  "scan_layers",
  "max_position_embeddings",
)
# Model keys that do not change the maths (the parameter layout or the context length a model was released
# for): never compared between a checkpoint and the run that reads it.
NOT_COMPARED = ("scan_layers", "max_position_embeddings")

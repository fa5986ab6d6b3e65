"""Input: tokenizers, Grain pipelines, and the offline teacher cache format (reader and writer)."""

"""The Llama-family decoder, its parameters on disk (Orbax parameters-only, Hugging Face in and out)."""

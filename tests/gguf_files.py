"""Tiny GGUF files written the way llama.cpp's convert_hf_to_gguf.py writes them (test helper).

A tiny transformers model's tensors are renamed to GGUF names, Llama's Q/K rows are permuted as
llama.cpp permutes them, every 2-D tensor is quantized to the asked type by the `gguf` package, and a
byte-level BPE tokenizer trained here goes into the metadata with a chat template.
"""

from __future__ import annotations

import json

import numpy as np

CHAT_TEMPLATE = (
  "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
  "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = (
  "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
  "The slings and arrows of outrageous fortune, Or to take arms against a sea of troubles. 1601 and 42. "
) * 4

_HF_TO_GGUF = {
  "input_layernorm.weight": "attn_norm.weight",
  "self_attn.q_proj.weight": "attn_q.weight",
  "self_attn.k_proj.weight": "attn_k.weight",
  "self_attn.v_proj.weight": "attn_v.weight",
  "self_attn.q_proj.bias": "attn_q.bias",
  "self_attn.k_proj.bias": "attn_k.bias",
  "self_attn.v_proj.bias": "attn_v.bias",
  "self_attn.o_proj.weight": "attn_output.weight",
  "self_attn.q_norm.weight": "attn_q_norm.weight",
  "self_attn.k_norm.weight": "attn_k_norm.weight",
  "post_attention_layernorm.weight": "ffn_norm.weight",
  "mlp.gate_proj.weight": "ffn_gate.weight",
  "mlp.up_proj.weight": "ffn_up.weight",
  "mlp.down_proj.weight": "ffn_down.weight",
}


def train_bpe(vocab_size: int = 320):
  """(tokens in id order, merges as 'a b' strings) of a byte-level BPE trained on TEXT."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
  )
  tok.train_from_iterator([TEXT], trainer)
  model = json.loads(tok.to_str())["model"]
  tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  return tokens, merges


def _gguf_name(hf_name: str) -> str | None:
  if hf_name == "model.embed_tokens.weight":
    return "token_embd.weight"
  if hf_name == "model.norm.weight":
    return "output_norm.weight"
  if hf_name == "lm_head.weight":
    return "output.weight"
  parts = hf_name.split(".")
  suffix = ".".join(parts[3:])
  return f"blk.{parts[2]}.{_HF_TO_GGUF[suffix]}" if suffix in _HF_TO_GGUF else None


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's permute (convert_hf_to_gguf.py, LlamaModel): HF's half-split rows -> interleaved."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model, arch: str, qtype: str, tokens, merges, pre: str = "smollm", token_types=None) -> None:
  """Writes `model` (a transformers Llama/Qwen2/Qwen3 causal LM) as a GGUF file of tensor type `qtype`."""
  import gguf
  from gguf import quants

  config = model.config
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(config.num_hidden_layers)
  writer.add_context_length(config.max_position_embeddings)
  writer.add_embedding_length(config.hidden_size)
  writer.add_feed_forward_length(config.intermediate_size)
  writer.add_head_count(config.num_attention_heads)
  writer.add_head_count_kv(config.num_key_value_heads)
  head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
  writer.add_key_length(head_dim)
  writer.add_value_length(head_dim)
  writer.add_layer_norm_rms_eps(config.rms_norm_eps)
  writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
  writer.add_vocab_size(config.vocab_size)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(tokens)
  writer.add_token_types(token_types or [3 if t in SPECIALS else 1 for t in tokens])
  writer.add_token_merges(merges)
  writer.add_bos_token_id(tokens.index("<|im_start|>"))
  writer.add_eos_token_id(tokens.index("<|im_end|>"))
  writer.add_pad_token_id(tokens.index("<|im_end|>"))
  writer.add_chat_template(CHAT_TEMPLATE)
  kind = gguf.GGMLQuantizationType[qtype]
  for hf_name, tensor in model.state_dict().items():
    name = _gguf_name(hf_name)
    if name is None or (hf_name == "lm_head.weight" and config.tie_word_embeddings):
      continue
    w = tensor.float().numpy()
    if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
      heads = config.num_attention_heads if "attn_q" in name else config.num_key_value_heads
      w = _permute(w, heads)
    if w.ndim == 2 and kind != gguf.GGMLQuantizationType.F32:
      writer.add_tensor(name, quants.quantize(w, kind), raw_dtype=kind)
    else:
      writer.add_tensor(name, w.astype(np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()

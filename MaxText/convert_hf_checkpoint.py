"""Hugging Face Llama 3.x / Qwen3 safetensors -> a parameters-only checkpoint of this project.

  python -m MaxText.convert_hf_checkpoint --hf_dir DIR --output CKPT --model_name llama3.1-8b [--dtype bfloat16]
  (--model_name default --set emb_dim=... for an architecture without a preset)

The output folder works as `load_parameters_path` or `kd_teacher_parameters_path`. The preset named
by --model_name is checked against the HF `config.json` before anything is read. Tensors are read
one at a time from the (single or sharded) safetensors files as the parameters are assembled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Mapping

import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaxText import checkpointing, hf_weights, pyconfig  # noqa: E402

# HF config.json field -> our key
_HF_KEYS = {
  "vocab_size": "vocab_size",
  "hidden_size": "emb_dim",
  "num_hidden_layers": "num_decoder_layers",
  "num_attention_heads": "num_query_heads",
  "num_key_value_heads": "num_kv_heads",
  "intermediate_size": "mlp_dim",
  "tie_word_embeddings": "logits_via_embedding",
  "head_dim": "head_dim",
  "rms_norm_eps": "normalization_layer_epsilon",
  "rope_theta": "rope_theta",
}


class LazySafetensors(Mapping):
  """name -> numpy array, each read from its file only when asked for."""

  def __init__(self, hf_dir: str):
    from safetensors import safe_open

    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    else:
      weight_map = {}
      for name in sorted(os.listdir(hf_dir)):
        if name.endswith(".safetensors"):
          with safe_open(os.path.join(hf_dir, name), framework="flax") as f:
            weight_map.update(dict.fromkeys(f.keys(), name))  # noqa: SIM118
    if not weight_map:
      raise FileNotFoundError(f"--hf_dir: no .safetensors files in {hf_dir!r}")
    self._dir, self._map = hf_dir, weight_map

  def __getitem__(self, name: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(os.path.join(self._dir, self._map[name]), framework="flax") as f:
      return np.asarray(f.get_tensor(name))  # bfloat16 stays bfloat16 (ml_dtypes)

  def __iter__(self) -> Iterator[str]:
    return iter(self._map)

  def __len__(self) -> int:
    return len(self._map)


def check_hf_config(hf_dir: str, config) -> None:
  """Raises naming the field when the HF config.json disagrees with the chosen preset."""
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--hf_dir: no config.json in {hf_dir!r}")
  with open(path, encoding="utf-8") as f:
    hf = json.load(f)
  hf = {**hf, **(hf.get("rope_parameters") or {})}  # newer configs keep rope_theta there
  arch = (hf.get("architectures") or ["?"])[0]
  if arch not in ("LlamaForCausalLM", "Qwen3ForCausalLM"):
    raise ValueError(f"--hf_dir: architecture {arch} is not supported (LlamaForCausalLM, Qwen3ForCausalLM)")
  for hf_key, ours in _HF_KEYS.items():
    if hf_key in hf and hf[hf_key] != getattr(config, ours):
      raise ValueError(f"--model_name: {ours}={getattr(config, ours)} but {path} has {hf_key}={hf[hf_key]}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--hf_dir", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--model_name", required=True, help="the preset under MaxText/configs/models/")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model keys over the preset")
  args = parser.parse_args(argv)
  config = pyconfig.initialize(["base.yml", f"model_name={args.model_name}", *args.set])
  check_hf_config(args.hf_dir, config)
  dtype = np.float32 if args.dtype == "float32" else __import__("ml_dtypes").bfloat16
  params = hf_weights.hf_to_params(LazySafetensors(args.hf_dir), config, dtype=dtype)
  checkpointing.save_params(args.output, params)
  print(f"wrote {args.output} ({sum(x.size for x in _leaves(params)):,} parameters, {args.dtype})")


def _leaves(tree):
  for value in tree.values():
    yield from (_leaves(value) if isinstance(value, dict) else [value])


if __name__ == "__main__":
  main()

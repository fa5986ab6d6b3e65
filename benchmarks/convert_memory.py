"""Peak memory of a Hugging Face -> checkpoint conversion and of the export back, against the model's size.

  python benchmarks/convert_memory.py [--emb 1024 --layers 8 --mlp 4096 --vocab 32000 --dtype float32]

Writes a random Llama-shaped safetensors folder (sharded, 2 files), runs each conversion in a fresh
process and reads that process's peak resident memory (ru_maxrss). The baseline is a process that
imports the same modules and starts JAX; "over baseline" is what the conversion itself added.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_random_llama(hf_dir: str, emb: int, layers: int, mlp: int, vocab: int, heads: int, kv_heads: int) -> dict:
  from safetensors.numpy import save_file

  head_dim = emb // heads
  rng = np.random.default_rng(0)
  shapes = {"model.embed_tokens.weight": (vocab, emb), "model.norm.weight": (emb,), "lm_head.weight": (vocab, emb)}
  for i in range(layers):
    p = f"model.layers.{i}."
    shapes.update(
      {
        p + "input_layernorm.weight": (emb,),
        p + "post_attention_layernorm.weight": (emb,),
        p + "self_attn.q_proj.weight": (heads * head_dim, emb),
        p + "self_attn.k_proj.weight": (kv_heads * head_dim, emb),
        p + "self_attn.v_proj.weight": (kv_heads * head_dim, emb),
        p + "self_attn.o_proj.weight": (emb, heads * head_dim),
        p + "mlp.gate_proj.weight": (mlp, emb),
        p + "mlp.up_proj.weight": (mlp, emb),
        p + "mlp.down_proj.weight": (emb, mlp),
      }
    )
  os.makedirs(hf_dir)
  names = list(shapes)
  halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2]}
  halves["model-00002-of-00002.safetensors"] = names[len(names) // 2 :]
  for file, part in halves.items():
    tensors = {n: (0.02 * rng.standard_normal(shapes[n], dtype=np.float32)) for n in part}
    save_file(tensors, os.path.join(hf_dir, file), metadata={"format": "pt"})
  weight_map = {n: f for f, part in halves.items() for n in part}
  with open(os.path.join(hf_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  config = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": vocab,
    "hidden_size": emb,
    "intermediate_size": mlp,
    "num_hidden_layers": layers,
    "num_attention_heads": heads,
    "num_key_value_heads": kv_heads,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
  }
  with open(os.path.join(hf_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  return shapes


def peak_rss_mib(code: str) -> float:
  """Peak resident memory of a fresh Python process running `code` (this process's children reset)."""
  script = f"{code}\nimport resource; print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, check=True)
  kib = int(proc.stdout.split("PEAK")[-1].split()[0])
  assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
  return kib / 1024


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--emb", type=int, default=1024)
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--mlp", type=int, default=4096)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--heads", type=int, default=16)
  parser.add_argument("--kv_heads", type=int, default=4)
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    hf_dir = os.path.join(tmp, "hf")
    shapes = write_random_llama(hf_dir, args.emb, args.layers, args.mlp, args.vocab, args.heads, args.kv_heads)
    out_bytes = sum(int(np.prod(s)) for s in shapes.values()) * np.dtype(args.dtype).itemsize
    largest = max(int(np.prod(s)) for s in shapes.values()) * 4
    imports = "import jax; jax.devices()\nfrom MaxText import convert_hf_checkpoint as c"
    base = peak_rss_mib(imports)
    ckpt, out = os.path.join(tmp, "ckpt"), os.path.join(tmp, "out")
    to_ours = peak_rss_mib(
      f"{imports}\nc.main(['--hf_dir', {hf_dir!r}, '--output', {ckpt!r}, '--dtype', {args.dtype!r}])"
    )
    to_hf = peak_rss_mib(
      f"{imports}\nc.main(['--to_hf', '--checkpoint', {ckpt!r}, '--output', {out!r}, "
      f"'--dtype', {args.dtype!r}, '--max_shard_size', '100MB'])"
    )
  mib = 2**20
  print(
    f"model {out_bytes / mib:.0f} MiB ({args.dtype}), largest tensor {largest / mib:.0f} MiB (float32 in the input)"
  )
  print(f"baseline process (imports + JAX): {base:.0f} MiB")
  for name, peak in (("HF -> ours", to_ours), ("ours -> HF (100MB shards)", to_hf)):
    over = peak - base
    print(
      f"{name}: peak {peak:.0f} MiB, {over:.0f} MiB over baseline = {over * mib / out_bytes:.2f} x the model, "
      f"{(over * mib - out_bytes) / largest:.2f} x the largest tensor beyond it"
    )


if __name__ == "__main__":
  main()

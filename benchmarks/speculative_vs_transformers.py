"""This project's speculative decoding beside transformers' assisted generation, same pair, same CPU:

  .venv/bin/python benchmarks/speculative_vs_transformers.py --target TARGET_CKPT --draft DRAFT_CKPT \
      --hf_target TARGET_HF_DIR --hf_draft DRAFT_HF_DIR [--k 4] [--new 48] [--rounds 3]

The checkpoints are the project's (a converted or trained folder) and the same models exported with
`convert_hf_checkpoint --to_hf`. Each prompt alone (batch 1), greedy, `--new` tokens with no stop token,
float32. Per round, interleaved: the project's plain decode, its speculative decode (k proposals a round),
transformers' `generate` plain and with `assistant_model` (the draft proposing a constant k, as here).
Prints tokens/s per round and the medians, and whether all four produce the same tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from speculative_costs import load_checkpoint  # noqa: E402 (this folder is the script's)

from MaxText.inference.generate import generate  # noqa: E402
from MaxText.inference.sampling import Sampling  # noqa: E402
from MaxText.inference.speculative import speculative_generate  # noqa: E402

PROMPTS = [
  "To be, or not to be, that is the question:",
  "Friends, Romans, countrymen, lend me your ears;",
  "Now is the winter of our discontent",
  "All the world's a stage, and all the men and women merely players.",
]


def main() -> None:
  import torch
  import transformers

  p = argparse.ArgumentParser()
  for name in ("--target", "--draft", "--hf_target", "--hf_draft"):
    p.add_argument(name, required=True)
  p.add_argument("--k", type=int, default=4)
  p.add_argument("--new", type=int, default=48)
  p.add_argument("--rounds", type=int, default=3)
  args = p.parse_args()
  tokenizer = transformers.AutoTokenizer.from_pretrained(args.hf_target)
  encoded = [tokenizer(text)["input_ids"] for text in PROMPTS]
  width = max(map(len, encoded))

  target, draft = load_checkpoint(args.target), load_checkpoint(args.draft)
  plain = jax.jit(lambda t, n: generate(target, t, n, jax.random.key(0), Sampling(), args.new))
  spec = jax.jit(
    lambda t, n: speculative_generate(target, draft, t, n, jax.random.key(0), Sampling(), args.new, args.k)
  )
  hf_target = transformers.AutoModelForCausalLM.from_pretrained(args.hf_target, torch_dtype=torch.float32).eval()
  hf_draft = transformers.AutoModelForCausalLM.from_pretrained(args.hf_draft, torch_dtype=torch.float32).eval()
  hf_draft.generation_config.num_assistant_tokens = args.k
  hf_draft.generation_config.num_assistant_tokens_schedule = "constant"

  def ours(fn, ids):
    tokens = np.zeros((1, width), np.int32)
    tokens[0, : len(ids)] = ids
    out = fn(jnp.asarray(tokens), jnp.asarray([len(ids)], jnp.int32))
    out = out if hasattr(out, "tokens_BxN") else out[0]  # speculative: (generated, stats)
    return np.asarray(out.tokens_BxN[0]).tolist()

  def theirs(ids, assistant):
    x = torch.tensor([ids])
    extra = {"assistant_model": hf_draft} if assistant else {}
    with torch.no_grad():
      out = hf_target.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False,
        eos_token_id=None, pad_token_id=tokenizer.pad_token_id or 0, **extra,
      )  # fmt: skip
    return out[0, len(ids) :].tolist()

  runs = {
    "project, plain": lambda ids: ours(plain, ids),
    f"project, speculative (k = {args.k})": lambda ids: ours(spec, ids),
    "transformers, plain": lambda ids: theirs(ids, False),
    f"transformers, assisted (k = {args.k})": lambda ids: theirs(ids, True),
  }
  outputs = {name: [fn(ids) for ids in encoded] for name, fn in runs.items()}  # warm-up and compiles
  speeds = {name: [] for name in runs}
  for _ in range(args.rounds):
    for name, fn in runs.items():
      start = time.perf_counter()
      for ids in encoded:
        fn(ids)
      speeds[name].append(len(encoded) * args.new / (time.perf_counter() - start))
  print(f"{len(PROMPTS)} prompts one at a time, {args.new} new tokens each, greedy, float32; tokens/s per round:")
  for name, values in speeds.items():
    rounds = ", ".join(f"{v:.1f}" for v in values)
    print(f"  {name:36s} median {np.median(values):6.1f}  ({rounds})")
  reference = outputs["project, plain"]
  for name, out in outputs.items():
    print(f"  {name:36s} tokens equal to the project's plain decode: {out == reference}")


if __name__ == "__main__":
  main()

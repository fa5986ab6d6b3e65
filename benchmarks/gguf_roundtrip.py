"""A checkpoint out as GGUF and back, measured against transformers' reading of each exported file.

  python benchmarks/gguf_roundtrip.py --checkpoint CKPT --out DIR [--types f32,f16,q8_0,q4_0]

For each type: the file's size; the tokenizer transformers builds from the file against ours (ids on sample
texts, the chat template's rendering); the logits of transformers' model against ours (largest difference
relative to the largest logit, and top-1 agreement over every position), and against ours on the file's
own weights (the file imported back with `--gguf`: what the export wrote, without the type's rounding);
greedy answers to three chat prompts (token for token at f32); and, for f32, the file imported back with
`--gguf`: the same parameters bit for bit. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaxText import convert_hf_checkpoint, pyconfig  # noqa: E402
from MaxText.data import chat  # noqa: E402
from MaxText.data.tokenizer import HuggingFaceTokenizer  # noqa: E402
from MaxText.inference.generate import generate  # noqa: E402
from MaxText.inference.sampling import Sampling  # noqa: E402
from MaxText.model import params_io  # noqa: E402
from MaxText.model.decoder import abstract_model, bind, split_params  # noqa: E402

TEXTS = [
  "What is the capital of France? In 2024, 12,345 people said 'Paris!'\n\n  Ünïcode too.",
  "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer",
  "def add(a, b):\n    return a + b  # 3.14159\n",
]
QUESTIONS = ["What is the capital of France?", "Write one sentence about the sea.", "Who wrote Hamlet?"]
NEW_TOKENS = 24


def load_ours(ckpt: str):
  """(our model in float32, the folder of its tokenizer) from the keys saved beside the checkpoint."""
  _, saved = params_io.saved_model_keys(ckpt)
  config = pyconfig.from_dict({**{k: v for k, v in saved.items() if k in pyconfig.MODEL_KEYS}, "dtype": "float32"})
  graphdef, abstract, _ = split_params(abstract_model(config))
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  tokenizer = saved["tokenizer_path"]
  return bind(graphdef, params_io.load_params(ckpt, abstract, shardings)), tokenizer


def greedy_ours(model, prompts: list[list[int]]) -> list[list[int]]:
  batch = np.zeros((len(prompts), max(map(len, prompts))), np.int32)
  for row, ids in enumerate(prompts):
    batch[row, : len(ids)] = ids
  lengths = jnp.asarray([len(ids) for ids in prompts])
  got = generate(model, jnp.asarray(batch), lengths, jax.random.key(0), Sampling(), NEW_TOKENS)
  return [np.asarray(got.tokens_BxN[row]).tolist() for row in range(len(prompts))]


def greedy_transformers(model, prompts: list[list[int]]) -> list[list[int]]:
  import torch

  answers = []
  for ids in prompts:
    x = torch.tensor([ids])
    with torch.no_grad():  # the mask is given: a pad id that is also the end-of-turn token would mask the prompt;
      # no eos: both sides decode NEW_TOKENS tokens, as our generate() does
      out = model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None
      )
    answers.append(out[0, len(ids) :].tolist())
  return answers


def measure(tokenizer_dir: str, path: str, ours, ours_tok, prompts, our_answers) -> dict:
  import torch
  import transformers

  folder, name = os.path.split(path)
  tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
  same_ids = all(tok.encode(t, add_special_tokens=False) == ours_tok.encode(t) for t in TEXTS)
  template, specials = chat.read_chat_template(tokenizer_dir)
  messages = [{"role": "user", "content": QUESTIONS[0]}]
  rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  same_template = rendered == chat.render(template, specials, messages, True)
  # the file's own weights, imported back by this project: what the export wrote, without the type's rounding
  imported = path.removesuffix(".gguf") + "-imported"
  convert_hf_checkpoint.main(["--gguf", path, "--output", imported])
  as_written = load_ours(imported)[0]
  errors, file_errors, agree, total = [], [], 0, 0
  for text in TEXTS:
    ids = ours_tok.encode(text)
    mine = np.asarray(ours.logits(np.asarray([ids])))[0]
    with torch.no_grad():
      theirs = model(torch.tensor([ids])).logits.numpy()[0]
    errors.append(float(np.max(np.abs(mine - theirs)) / np.max(np.abs(mine))))
    written = np.asarray(as_written.logits(np.asarray([ids])))[0]
    file_errors.append(float(np.max(np.abs(written - theirs)) / np.max(np.abs(written))))
    agree += int(np.sum(mine.argmax(-1) == theirs.argmax(-1)))
    total += len(ids)
  answers = greedy_transformers(model, prompts)
  same_answers = sum(a == b for a, b in zip(answers, our_answers, strict=True))
  return {
    "MB": os.path.getsize(path) / 2**20,
    "ids": same_ids,
    "template": same_template,
    "rel_err": max(errors),
    "file_err": max(file_errors),
    "top1": agree / total,
    "greedy": f"{same_answers}/{len(prompts)}",
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="a converted folder or a run's step folder")
  parser.add_argument("--out", required=True, help="folder for the exported files (must not exist)")
  parser.add_argument("--types", default="f32,f16,q8_0,q4_0")
  args = parser.parse_args()
  os.makedirs(args.out)
  ours, tokenizer_dir = load_ours(args.checkpoint)
  ours_tok = HuggingFaceTokenizer(tokenizer_dir)
  template, specials = chat.read_chat_template(tokenizer_dir)
  conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
  prompts = [ours_tok.encode(chat.render(template, specials, c, True)) for c in conversations]
  our_answers = greedy_ours(ours, prompts)
  for question, answer in zip(QUESTIONS, our_answers, strict=True):
    print(f"> {question}\n{ours_tok.decode(answer)!r}")
  rows = []
  for kind in args.types.split(","):
    path = os.path.join(args.out, f"model-{kind}.gguf")
    convert_hf_checkpoint.main(["--to_gguf", "--checkpoint", args.checkpoint, "--output", path, "--gguf_type", kind])
    rows.append((kind, measure(tokenizer_dir, path, ours, ours_tok, prompts, our_answers)))
  back = os.path.join(args.out, "imported-f32")
  convert_hf_checkpoint.main(["--gguf", os.path.join(args.out, "model-f32.gguf"), "--output", back])
  before, after = params_io.read_params_to_host(args.checkpoint), params_io.read_params_to_host(back)
  pairs = zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
  bitwise = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
  print("\n| type | file MB | tokenizer ids | chat template | logits vs ours | vs ours on the file | top-1 | greedy |")
  print("|---|---|---|---|---|---|---|---|")
  for kind, m in rows:
    print(
      f"| {kind} | {m['MB']:.1f} | {'same' if m['ids'] else 'DIFFER'} | {'same' if m['template'] else 'DIFFERS'} | "
      f"{m['rel_err']:.2e} | {m['file_err']:.2e} | {m['top1']:.4f} | {m['greedy']} |"
    )
  print(f"\nf32 file imported back with --gguf: parameters {'bit for bit equal' if bitwise else 'DIFFER'}")


if __name__ == "__main__":
  main()

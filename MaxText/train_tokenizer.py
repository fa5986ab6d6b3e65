"""Trains a small BPE (Hugging Face `tokenizers`) or sentencepiece tokenizer on a corpus.

  python MaxText/train_tokenizer.py --type bpe --vocab_size 4096 --output tok/         # -> tok/tokenizer.json
  python MaxText/train_tokenizer.py --type sentencepiece --vocab_size 4096 --output tok/  # -> tok/tokenizer.model

The corpus is read exactly as training reads it (default: the Shakespeare texts).
"""

from __future__ import annotations

import argparse
import os
import sys
import types

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaxText.data.input_pipeline import read_texts  # noqa: E402

SPECIALS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2 in both kinds


def train_bpe(texts: list[str], vocab_size: int, output: str) -> str:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=list(SPECIALS),
    show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tokenizer.train_from_iterator(texts, trainer=trainer)
  path = os.path.join(output, "tokenizer.json")
  tokenizer.save(path)
  return path


def train_sentencepiece(texts: list[str], vocab_size: int, output: str) -> str:
  import sentencepiece as spm

  prefix = os.path.join(output, "tokenizer")
  lines = (line for text in texts for line in text.splitlines() if line.strip())
  spm.SentencePieceTrainer.train(
    sentence_iterator=lines,
    model_prefix=prefix,
    vocab_size=vocab_size,
    model_type="bpe",
    pad_id=0,
    bos_id=1,
    eos_id=2,
    unk_id=3,
    byte_fallback=True,
    character_coverage=1.0,
    minloglevel=2,
  )
  return prefix + ".model"


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--type", choices=("bpe", "sentencepiece"), default="bpe")
  parser.add_argument("--vocab_size", type=int, default=4096)
  parser.add_argument("--output", required=True, help="folder to write the tokenizer into")
  parser.add_argument("--dataset_type", choices=("text", "jsonl", "parquet"), default="text")
  parser.add_argument("--dataset_path", default="", help="files/globs; empty = the Shakespeare corpus")
  parser.add_argument("--data_column", default="text")
  args = parser.parse_args(argv)
  source = types.SimpleNamespace(
    dataset_type=args.dataset_type, dataset_path=args.dataset_path, data_column=args.data_column
  )
  texts = read_texts(source)
  os.makedirs(args.output, exist_ok=True)
  train = train_bpe if args.type == "bpe" else train_sentencepiece
  path = train(texts, args.vocab_size, args.output)
  print(f"wrote {path}")
  return path


if __name__ == "__main__":
  main()

"""Writes an lm-eval task (a YAML and, for the cloze, its JSONL) that reads only local files.

  python evals/make_task.py cloze --text held_out.txt[,more.txt] --name cloze_plays --output evals/local \
      [--count 500 --seed 0 --min_words 40 --max_words 150 --anywhere]
  python evals/make_task.py choice --data my_questions.jsonl --name my_mc --output evals/local
  python evals/make_task.py exact --data my_prompts.jsonl --name my_qa --output evals/local

then: python -m MaxText.run_lm_eval --model maxtext --model_args load_parameters_path=CKPT \
          --include_path evals/local --tasks cloze_plays
Formats (MaxText/lm_harness/tasks.py): cloze = LAMBADA-style final-word prediction built from text;
choice = {"question", "choices": [...], "answer": index}; exact = {"prompt", "answer"} (greedy answer up to a
newline, exact match ignoring case and punctuation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaxText.lm_harness import tasks  # noqa: E402


def _cloze(args) -> str:
  records = []
  for path in (p for p in args.text.split(",") if p):
    if not os.path.isfile(path):
      raise ValueError(f"--text: {path!r} is not a file")
    with open(path, encoding="utf-8") as f:
      records += tasks.cloze_passages(f.read(), args.min_words, args.max_words, not args.anywhere)
  records = tasks.sample(records, args.count, args.seed)
  if not records:
    raise ValueError(f"--text: no passage of {args.min_words}+ words ends in a usable word in {args.text!r}")
  os.makedirs(args.output, exist_ok=True)
  data = os.path.join(args.output, f"{args.name}.jsonl")
  with open(data, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  return f"{len(records)} passages in {data}; task {tasks.write_task('cloze', args.name, data, args.output)}"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("format", choices=tasks.FORMATS)
  parser.add_argument("--name", required=True, help="the task's name (lm-eval's --tasks)")
  parser.add_argument("--output", required=True, help="folder for the YAML (lm-eval's --include_path)")
  parser.add_argument("--text", default="", help="cloze: comma-separated text files to cut passages from")
  parser.add_argument("--data", default="", help="choice / exact: the JSONL of records")
  parser.add_argument("--count", type=int, default=0, help="cloze: keep this many passages (seeded; 0 = all)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--min_words", type=int, default=40)
  parser.add_argument("--max_words", type=int, default=150)
  parser.add_argument("--anywhere", action="store_true", help="cloze: keep words that do not occur earlier")
  args = parser.parse_args(argv)
  try:
    if args.format == "cloze":
      print(_cloze(args))
    else:
      if not os.path.isfile(args.data):
        raise ValueError(f"--data: {args.data!r} is not a file")
      count = tasks.check_records(args.format, args.data)
      print(f"{count} records; task {tasks.write_task(args.format, args.name, args.data, args.output)}")
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())

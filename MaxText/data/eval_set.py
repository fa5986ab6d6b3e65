"""The batches an eval pass scores, chosen once and reused by every pass (periodic evals, eval_only).

The eval split (eval_dataset_path, or the held-out documents of dataset_path) is read once, each host its
share of the documents, and cut into windows as training cuts them (SFT: one example per conversation).
`eval_sampling=spread` takes the windows in a seeded pseudo-random order (the same every pass and every
run, independent of the shuffle seed), so `eval_steps` batches sample the whole eval set instead of its
first documents; `start` takes them in document order. `eval_steps=-1` scores every window once. The
pass reports the share of the eval set's target tokens it scored. The eval set is held in memory while
it is read (this host's share, as int32 tokens).
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from MaxText.config.errors import BadInputError
from MaxText.data import input_pipeline, two_stream

_SAMPLING_SEED = 20240608  # fixed: the windows an eval scores must not move with the shuffle seed


@dataclasses.dataclass(frozen=True)
class EvalSet:
  batches: list[dict]  # this host's batches (numpy), the same count on every host
  scored_tokens: int  # target tokens in the chosen batches, all hosts
  total_tokens: int  # target tokens of the whole eval split, all hosts

  def coverage(self) -> str:
    if self.total_tokens == 0:  # synthetic data: endless, no share to report
      return ""
    share = 100.0 * self.scored_tokens / max(self.total_tokens, 1)
    return f"; {share:.1f}% of the eval set's {self.total_tokens:,} target tokens"


def coverage(sets: dict[str, EvalSet]) -> str:
  """The share of the eval target tokens that a pass over all of `sets` scores (a mixture: all its sources)."""
  merged = EvalSet([], sum(s.scored_tokens for s in sets.values()), sum(s.total_tokens for s in sets.values()))
  return merged.coverage()


def _examples(config, corpus) -> list[dict]:
  """This host's eval examples in document order: windows of each document, or SFT conversations."""
  split_corpus, indices = input_pipeline._split(config, corpus, "eval")
  examples = []
  for index in indices:
    tokens = split_corpus.encode(split_corpus.documents[int(index)])
    if split_corpus.two_stream:
      length = input_pipeline.teacher_length(config)
      examples.extend(
        two_stream.TwoStreamWindows(config.max_target_length, length, 1, split_corpus.sft).flat_map(tokens)
      )
    elif split_corpus.sft:
      examples.append(tokens)
    else:
      examples.extend(input_pipeline._example(w) for w in input_pipeline.windows(tokens, config.max_target_length))
  return examples


def _target_tokens(example: dict) -> int:
  return int(np.sum(example["targets_mask"])) if "targets_mask" in example else len(example["targets"])


def _ordered(config, examples: list[dict]) -> list[dict]:
  if config.eval_sampling == "start":
    return examples
  order = np.random.default_rng([_SAMPLING_SEED, jax.process_index()]).permutation(len(examples))
  return [examples[i] for i in order]


def _pad_rows(batch: dict, rows: int) -> dict:
  """A last, short batch filled with empty rows (segmentation 0: no token of them is scored)."""
  missing = rows - len(batch["inputs"])
  return {k: np.pad(v, ((0, missing), (0, 0))) for k, v in batch.items()} if missing else batch


def build(config, corpus, local_batch: int) -> EvalSet:
  """This host's eval batches: `eval_steps` of them (fewer if the eval set is smaller), or all (-1)."""
  if config.dataset_type == "synthetic":
    batches = input_pipeline.make_iterator(config, None, "eval", local_batch)
    return EvalSet([next(batches) for _ in range(max(config.eval_steps, 1))], 0, 0)
  examples = _examples(config, corpus)
  is_sft = corpus is not None and corpus.sft
  streams = corpus is not None and corpus.two_stream
  ds = grain.MapDataset.source(_ordered(config, examples)).to_iter_dataset()
  batches = []
  for batch in input_pipeline.batched(config, ds, local_batch, is_sft, drop_remainder=False, two_streams=streams):
    batches.append(_pad_rows({k: np.asarray(v) for k, v in batch.items()}, local_batch))
    if config.eval_steps != -1 and len(batches) == config.eval_steps:
      break
  counts = np.asarray([len(batches), sum(map(_target_tokens, examples))], np.int64)
  counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, 2)
  batch_count = int(counts[:, 0].max())
  if batch_count == 0:
    raise BadInputError("eval: the eval split holds no window of two or more tokens")
  empty = {k: np.zeros_like(v) for k, v in (batches or [_empty_batch(config, local_batch)])[0].items()}
  batches += [empty] * (batch_count - len(batches))  # every host runs the same number of eval steps
  scored = np.asarray([sum(int(np.sum(b["targets_segmentation"] > 0)) for b in batches)], np.int64)
  scored = int(np.asarray(multihost_utils.process_allgather(scored)).sum())
  return EvalSet(batches, scored, int(counts[:, 1].sum()))


def _empty_batch(config, local_batch: int) -> dict:
  shape = (local_batch, config.max_target_length)
  names = ("inputs", "inputs_position", "inputs_segmentation", "targets", "targets_segmentation")
  batch = {name: np.zeros(shape, np.int32) for name in names}
  if config.use_kd and config.kd_teacher_tokenizer_path:  # cross-tokenizer KD: the teacher stream, no heads
    teacher_shape = (local_batch, input_pipeline.teacher_length(config))
    batch.update({f"teacher_{name}": np.zeros(teacher_shape, np.int32) for name in names})
    batch.update({name: np.zeros(shape, np.int32) for name in two_stream.STUDENT_FIELDS[2:]})
  return batch

"""What the generation jobs share: prompts to token ids (chat-rendered or plain) and a jitted batch generator
over loaded parameters on the training mesh."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from MaxText.config.errors import ConfigError
from MaxText.data import chat
from MaxText.inference.generate import generate
from MaxText.inference.sampling import Sampling
from MaxText.inference.speculative import speculative_generate
from MaxText.model import decoder


def encode_prompt(config, tokenizer, template, record: dict) -> list[int]:
  """A prompt record's token ids: `messages` chat-rendered up to the generation prompt, `prompt` after BOS."""
  if "messages" in record:
    return tokenizer.encode(chat.render(*template, record["messages"], add_generation_prompt=True))
  bos = [tokenizer.bos_id] if config.add_bos and tokenizer.bos_id is not None else []
  return bos + tokenizer.encode(record["prompt"])


def stop_ids(config, tokenizer) -> tuple[int, ...]:
  """decode_stop_tokens, or the tokenizer's eos."""
  listed = tuple(int(t) for t in config.decode_stop_tokens.split(",") if t.strip())
  return listed or ((tokenizer.eos_id,) if tokenizer.eos_id is not None else ())


def needs_template(records: list[dict]) -> bool:
  return any("messages" in r for r in records)


def template_of(config, records: list[dict]):
  """The tokenizer's chat template when any record has messages (read once), else None."""
  if not needs_template(records):
    return None
  if config.tokenizer_type != "huggingface":
    raise ConfigError("tokenizer_type: messages need a huggingface tokenizer folder with a chat_template")
  return chat.read_chat_template(config.tokenizer_path)


def load_draft(config, mesh):
  """(graphdef, parameters, tokens a round) of the speculative draft `decode_draft_parameters_path`, or None."""
  from MaxText.config.draft import draft_config
  from MaxText.model.params_io import load_params
  from MaxText.parallel import sharding

  draft = draft_config(config)
  if draft is None:
    return None
  graphdef, abstract, axes = decoder.split_params(decoder.abstract_model(draft))
  params = load_params(config.decode_draft_parameters_path, abstract, sharding.logical_shardings(axes, abstract, mesh))
  return graphdef, params, config.decode_draft_tokens


class BatchGenerator:
  """Generates for lists of prompts (token ids) in batches of `rows`, right-padded, one compile per padded
  width: the longest prompt's length, or `width_of` it (a bucketing that bounds the number of compiles).
  `new_tokens` overrides decode_max_new_tokens and `sampling` the decode_sampling_* rules. `draft`:
  (graphdef, params, tokens a round) of a speculative draft; `stats` then sums its round counts."""

  def __init__(
    self,
    config,
    graphdef,
    params,
    rows: int,
    stops: tuple[int, ...],
    pad_id: int,
    new_tokens=None,
    width_of=None,
    sampling: Sampling | None = None,
    draft: tuple | None = None,
  ):
    self.rows, self.stops, self.pad_id, self.draft = rows, stops, pad_id, draft
    self.stats = {"proposed": 0, "accepted": 0, "target_calls": 0, "committed": 0}
    self.width_of = width_of or (lambda longest: longest)
    sampling = sampling or Sampling.from_config(config)
    new_tokens = config.decode_max_new_tokens if new_tokens is None else new_tokens

    def generate_batch(params, draft_params, tokens, lengths, key):
      model = decoder.bind(graphdef, params)
      if draft is None:
        return generate(model, tokens, lengths, key, sampling, new_tokens, stops, pad_id), None
      drafter = decoder.bind(draft[0], draft_params)
      return speculative_generate(model, drafter, tokens, lengths, key, sampling, new_tokens, draft[2], stops, pad_id)

    self.params, self._generate = params, jax.jit(generate_batch)
    self.draft_params = None if draft is None else draft[1]

  def __call__(self, prompts: list[list[int]], key) -> list[tuple[list[int], bool]]:
    """(generated ids, whether a stop token ended them) per prompt; at most `rows` prompts."""
    assert 0 < len(prompts) <= self.rows
    filled = prompts + [prompts[0]] * (self.rows - len(prompts))  # spare rows repeat the first prompt
    tokens = np.full((self.rows, self.width_of(max(map(len, filled)))), self.pad_id, np.int32)
    for row, ids in enumerate(filled):
      tokens[row, : len(ids)] = ids
    lengths = jnp.asarray([len(ids) for ids in filled], jnp.int32)
    out, stats = self._generate(self.params, self.draft_params, jnp.asarray(tokens), lengths, key)
    generated, counts = np.asarray(out.tokens_BxN), np.asarray(out.lengths_B)
    if stats is not None:  # the rows that hold prompts
      for name, value in stats._asdict().items():
        self.stats[name.removesuffix("_B")] += int(np.sum(np.asarray(value)[: len(prompts)]))
    results = []
    for row in range(len(prompts)):
      ids = generated[row, : counts[row]].tolist()
      results.append((ids, bool(ids) and ids[-1] in self.stops))
    return results


def speed_report(stats: dict, seconds: float) -> str:
  """Acceptance (accepted / proposed draft tokens), tokens per target forward and tokens/s of a speculative run."""
  rate = stats["accepted"] / max(stats["proposed"], 1)
  per_call = stats["committed"] / max(stats["target_calls"], 1)
  return (
    f"speculative decoding: acceptance {rate:.3f} ({stats['accepted']} of {stats['proposed']} draft tokens), "
    f"{per_call:.2f} tokens per target forward, {stats['committed'] / seconds:,.1f} tokens/s"
  )

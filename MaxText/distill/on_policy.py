"""On-policy distillation (GKD, MiniLLM): on a share of the steps the student writes the continuations it
is trained on, and the teacher scores them token by token.

On an on-policy step (`kd_on_policy_fraction` of the steps, chosen by a hash of the step and `seed`, so
a resumed run makes the same choices) each row of the batch is cut to a prompt: the tokens of its first
segment up to its first target (for SFT data: up to where the assistant's answer starts), or, for plain
text whose targets start at once, the first max_target_length - kd_on_policy_max_new_tokens tokens of
that segment. The current student samples up to `kd_on_policy_max_new_tokens` tokens after it at
`kd_on_policy_temperature` (stopping at the tokenizer's eos), in a jitted call of its own whose time is
logged as kd/generation_s. The new rows (prompt + sample, one segment) have targets on the sampled
tokens only, and the step's loss is `kd_on_policy_divergence` (reverse KL by default, GKD's beta = 1) of
the student from the teacher on them, at the run's temperature and pruning, with alpha = 1 (the labels
are the student's own samples, so cross-entropy on them would teach nothing).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from MaxText.inference.generate import generate
from MaxText.inference.sampling import Sampling


def is_on_policy_step(config, step: int) -> bool:
  """A pure function of (seed, step): every host, and a resumed run, decides alike."""
  if config.kd_on_policy_fraction <= 0:
    return False
  return bool(np.random.default_rng([config.seed, step, 0x0B]).random() < config.kd_on_policy_fraction)


def on_policy_config(config):
  """The config of the on-policy step: alpha 1 (constant) and the on-policy divergence."""
  return dataclasses.replace(
    config,
    kd_alpha=1.0,
    kd_alpha_end=-1.0,
    kd_alpha_schedule="constant",
    kd_divergence=config.kd_on_policy_divergence,
  )


def prompt_lengths(batch: dict, max_new_tokens: int) -> jax.Array:
  """[B] prompt length of each row: its first segment up to its first target (at least one token), or,
  when targets start at the first token, the segment's first L - max_new_tokens tokens."""
  length = batch["inputs"].shape[1]
  first_segment = batch["inputs_segmentation"] == 1
  segment_len = jnp.sum(first_segment, axis=1)
  is_target = (batch["targets_segmentation"] != 0) & first_segment
  first_target = jnp.argmax(is_target, axis=1)  # the target at t is predicted from inputs[: t + 1]
  prompt = jnp.where(first_target > 0, first_target + 1, jnp.minimum(segment_len, length - max_new_tokens))
  return jnp.clip(prompt, 1, length - max_new_tokens).astype(jnp.int32)


def sampled_batch(model, batch: dict, key, temperature: float, max_new_tokens: int, stop_ids: tuple) -> dict:
  """The batch rebuilt from each row's prompt and the student's sample: targets on the sampled tokens only."""
  batch_size, length = batch["inputs"].shape
  prompt_len = prompt_lengths(batch, max_new_tokens)
  sampling = Sampling("weighted", temperature)
  out = generate(model, batch["inputs"], prompt_len, key, sampling, max_new_tokens, stop_ids)
  rows = jnp.arange(batch_size)[:, None]
  slots = prompt_len[:, None] + jnp.arange(max_new_tokens)[None, :]
  keep_prompt = jnp.arange(length + 1)[None, :] < prompt_len[:, None]
  tokens = jnp.where(keep_prompt, jnp.pad(batch["inputs"], ((0, 0), (0, 1))), 0)
  tokens = tokens.at[rows, slots].set(out.tokens_BxN)  # prompt + N <= L: every slot is inside the row
  total = prompt_len + out.lengths_B  # real tokens per row
  position = jnp.arange(length)[None, :]
  real_input = (position < (total - 1)[:, None]).astype(jnp.int32)
  sampled_target = ((position >= (prompt_len - 1)[:, None]) & (position < (total - 1)[:, None])).astype(jnp.int32)
  return {
    "inputs": tokens[:, :length],
    "targets": tokens[:, 1:],
    "inputs_position": jnp.broadcast_to(position, (batch_size, length)).astype(jnp.int32),
    "inputs_segmentation": real_input,
    "targets_segmentation": sampled_target,
  }

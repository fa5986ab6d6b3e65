"""Speculative decoding: a small draft model proposes `draft_tokens` tokens a round, the target checks them
all in one forward pass and keeps the longest run it agrees with, so what the target writes is unchanged
and only faster (Leviathan et al. 2023; Chen et al. 2023).

Greedy: a proposal is kept while it is the target's argmax; the first disagreement is replaced by the
target's own token, and a block accepted whole earns the target's next token too, so a round commits 1
to k + 1 tokens, each the target's greedy choice.
Sampling: proposal x ~ q is kept with probability min(1, p(x) / q(x)); at the first rejection the token
is drawn from max(p - q, 0) renormalised, after a block accepted whole from p. p and q are the
*processed* distributions (temperature, top-k, top-p of `Sampling`), so every committed token is
distributed exactly as the target's own sampling would draw it. A draft whose vocabulary is padded to
another size (same tokenizer) proposes over the target's ids only (`in_target_width`).

Caches (slot = position, model/kv_cache.py): a rejected token's keys and values need no undo, since the
token that later takes its position rewrites its slot before anything attends to it. At the start of a
round, a row with n committed tokens has both caches right for positions < n - 1; the round feeds the
target the last committed token and the k proposals, and the draft the last two committed tokens (a
block accepted whole leaves the draft one token behind: its last proposal was never fed to it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from MaxText.inference.generate import Generated, _finish
from MaxText.inference.sampling import Sampling, sample, truncated_logits
from MaxText.model import kv_cache


class SpeculativeStats(NamedTuple):
  proposed_B: jax.Array  # draft tokens proposed to the target while the row was unfinished
  accepted_B: jax.Array  # of those, the ones the target kept
  target_calls_B: jax.Array  # target forward passes (rounds) while the row was unfinished
  committed_B: jax.Array  # tokens written (= the row's generated tokens)


def _probs(logits, sampling: Sampling):
  return jax.nn.softmax(truncated_logits(logits, sampling), axis=-1)


def in_target_width(draft_logits_BxV, width: int):
  """The draft's logits over the target's `width` ids: a padded vocabulary of the same tokenizer may be wider
  or narrower. Ids the target lacks are dropped (never proposed); ids the draft lacks get -inf (q = 0, so
  the rejection rule's residual max(p - q, 0) gives them all of the target's mass there)."""
  vocab = draft_logits_BxV.shape[-1]
  if vocab >= width:
    return draft_logits_BxV[..., :width]
  return jnp.pad(
    draft_logits_BxV, [(0, 0)] * (draft_logits_BxV.ndim - 1) + [(0, width - vocab)], constant_values=-jnp.inf
  )


def _propose(draft, cache, seq_BxS, n_B, key, sampling: Sampling, k: int, width: int):
  """k draft tokens after each row's n committed ones, with their processed distributions q (sampling only)
  over the target's `width` ids."""
  rows = jnp.arange(seq_BxS.shape[0])
  pos_BxT = jnp.stack([jnp.maximum(n_B - 2, 0), n_B - 1], axis=1)
  hidden, cache = kv_cache.extend(draft, seq_BxS[rows[:, None], pos_BxT], pos_BxT, cache)
  logits_of = lambda hidden_BxD: in_target_width(kv_cache.logits_of(draft, hidden_BxD), width)
  logits = logits_of(hidden[:, 1])

  def one(carry, index):
    logits, cache, key = carry
    key, subkey = jax.random.split(key)
    token = sample(logits, subkey, sampling)
    q = jnp.zeros((), jnp.float32) if sampling.strategy == "greedy" else _probs(logits, sampling)
    hidden, cache = kv_cache.extend(draft, token[:, None], (n_B + index)[:, None], cache)
    return (logits_of(hidden[:, 0]), cache, key), (token, q)

  # the k-th proposal is not fed: its slot is written next round if the target keeps it
  (logits, cache, key), (tokens_KxB, q_KxB) = jax.lax.scan(one, (logits, cache, key), jnp.arange(k - 1))
  key, subkey = jax.random.split(key)
  last = sample(logits, subkey, sampling)
  tokens_BxK = jnp.concatenate([tokens_KxB.T, last[:, None]], axis=1)
  if sampling.strategy == "greedy":
    return tokens_BxK, None, cache
  q_BxKxV = jnp.concatenate([jnp.moveaxis(q_KxB, 0, 1), _probs(logits, sampling)[:, None]], axis=1)
  return tokens_BxK, q_BxKxV, cache


def _leading(accept_BxK):
  return jnp.sum(jnp.cumprod(accept_BxK.astype(jnp.int32), axis=1), axis=1)


def verify(target_logits_BxK1xV, draft_BxK, q_BxKxV, key, sampling: Sampling):
  """(accepted proposals a [B], the round's new tokens [B, k + 1]: the a kept proposals, then the target's token)."""
  batch, k = draft_BxK.shape
  j = jnp.arange(k + 1)[None]
  if sampling.strategy == "greedy":
    choice_BxK1 = jnp.argmax(target_logits_BxK1xV, axis=-1).astype(jnp.int32)
    accepted = _leading(draft_BxK == choice_BxK1[:, :k])
    last = jnp.take_along_axis(choice_BxK1, accepted[:, None], axis=1)[:, 0]
  else:
    p_BxK1xV = _probs(target_logits_BxK1xV.reshape(batch * (k + 1), -1), sampling).reshape(batch, k + 1, -1)
    ratio_key, residual_key = jax.random.split(key)
    p_x = jnp.take_along_axis(p_BxK1xV[:, :k], draft_BxK[..., None], axis=2)[..., 0]
    q_x = jnp.take_along_axis(q_BxKxV, draft_BxK[..., None], axis=2)[..., 0]
    accepted = _leading(jax.random.uniform(ratio_key, (batch, k)) * q_x < p_x)  # u < p / q, q(x) > 0
    p_a = jnp.take_along_axis(p_BxK1xV, accepted[:, None, None], axis=1)[:, 0]
    q_pad = jnp.concatenate([q_BxKxV, jnp.zeros_like(q_BxKxV[:, :1])], axis=1)  # after a full block: p itself
    residual = jnp.maximum(p_a - jnp.take_along_axis(q_pad, accepted[:, None, None], axis=1)[:, 0], 0.0)
    residual = jnp.where(jnp.sum(residual, -1, keepdims=True) > 0, residual, p_a)  # p = q: never rejected
    last = jax.random.categorical(residual_key, jnp.log(residual), axis=-1).astype(jnp.int32)
  draft_pad = jnp.concatenate([draft_BxK, jnp.zeros_like(draft_BxK[:, :1])], axis=1)
  new_BxK1 = jnp.where(j < accepted[:, None], draft_pad, last[:, None])
  return accepted, new_BxK1


def speculative_generate(
  target,
  draft,
  prompt_BxP,
  prompt_lengths_B,
  key,
  sampling: Sampling,
  max_new_tokens: int,
  draft_tokens: int,
  stop_ids=(),
  pad_id: int = 0,
) -> tuple[Generated, SpeculativeStats]:
  """`generate`'s result (the target's own tokens, or its own sampling distribution) and the round counts."""
  batch, prompt_len = prompt_BxP.shape
  k, rows = draft_tokens, jnp.arange(batch)
  slots = prompt_len + max_new_tokens + k + 1
  positions = jnp.broadcast_to(jnp.arange(prompt_len), (batch, prompt_len))
  target_cache = kv_cache.extend(target, prompt_BxP, positions, kv_cache.init_cache(target.config, batch, slots))[1]
  draft_cache = kv_cache.extend(draft, prompt_BxP, positions, kv_cache.init_cache(draft.config, batch, slots))[1]
  seq = jnp.full((batch, slots), pad_id, jnp.int32).at[:, :prompt_len].set(prompt_BxP)
  stops = jnp.asarray(stop_ids or (-1,), jnp.int32)
  zeros = jnp.zeros(batch, jnp.int32)

  def unfinished(state):
    return ~jnp.all(state[4])

  def one_round(state):
    seq, n, target_cache, draft_cache, done, key, stats = state
    key, draft_key, verify_key = jax.random.split(key, 3)
    proposals, q, draft_cache = _propose(draft, draft_cache, seq, n, draft_key, sampling, k, target.config.vocab_size)
    block = jnp.concatenate([seq[rows, n - 1][:, None], proposals], axis=1)
    hidden, target_cache = kv_cache.extend(target, block, (n - 1)[:, None] + jnp.arange(k + 1), target_cache)
    logits = kv_cache.logits_of(target, hidden.reshape(batch * (k + 1), -1)).reshape(batch, k + 1, -1)
    accepted, new = verify(logits, proposals, q, verify_key, sampling)
    is_stop = jnp.isin(new, stops) & (jnp.arange(k + 1)[None] <= accepted[:, None])
    upto_stop = jnp.where(jnp.any(is_stop, 1), jnp.argmax(is_stop, 1) + 1, k + 1)
    generated = n - prompt_lengths_B
    count = jnp.where(done, 0, jnp.minimum(jnp.minimum(accepted + 1, upto_stop), max_new_tokens - generated))
    write_at = jnp.where(jnp.arange(k + 1)[None] < count[:, None], n[:, None] + jnp.arange(k + 1), slots)
    seq = seq.at[rows[:, None], write_at].set(new, mode="drop")
    active = (~done).astype(jnp.int32)
    stats = SpeculativeStats(
      stats.proposed_B + active * k,
      stats.accepted_B + active * accepted,
      stats.target_calls_B + active,
      stats.committed_B + count,
    )
    done = done | (jnp.any(is_stop, 1) & (upto_stop <= count)) | (generated + count >= max_new_tokens)
    return seq, n + count, target_cache, draft_cache, done, key, stats

  state = (seq, prompt_lengths_B, target_cache, draft_cache, jnp.full(batch, max_new_tokens <= 0), key)
  state = (*state, SpeculativeStats(zeros, zeros, zeros, zeros))
  seq, _, _, _, _, _, stats = jax.lax.while_loop(unfinished, one_round, state)
  gather_at = prompt_lengths_B[:, None] + jnp.arange(max_new_tokens)
  out = jnp.where(jnp.arange(max_new_tokens)[None] < stats.committed_B[:, None], seq[rows[:, None], gather_at], pad_id)
  return _finish(out, pad_id, tuple(stop_ids)), stats

"""Exact log-likelihoods of token sequences with the project's own forward pass, batched on the mesh.

One request is a token sequence and how many of its last tokens are scored: the model reads
`tokens[:-1]` and the log-probability of each of the last `scored` tokens given what precedes it is
summed (lm-eval's loglikelihood: context + continuation, and its rolling windows). Rows are sorted by
length, cut into batches of `rows` and right-padded to a power-of-two width, so a whole task compiles
a handful of programs; causal attention keeps the padding from touching the scored positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from MaxText.model import decoder

_MIN_WIDTH = 16


def bucket_width(length: int, limit: int) -> int:
  """The padded width of a batch whose longest row has `length` tokens: a power of two, at most `limit`."""
  width = _MIN_WIDTH
  while width < length:
    width *= 2
  return min(width, max(limit, length))


def _score_batch(graphdef, params, inputs_BxL, targets_BxL, scored_BxL):
  """(sum of the scored targets' log-probs, whether each scored target is the argmax) per row."""
  logits = decoder.bind(graphdef, params).logits(inputs_BxL)
  target_logit = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  logprob = target_logit - jax.nn.logsumexp(logits, axis=-1)  # no [B, L, V] log-softmax is materialised
  is_greedy = jnp.argmax(logits, axis=-1) == targets_BxL
  return jnp.sum(jnp.where(scored_BxL, logprob, 0.0), axis=-1), jnp.all(is_greedy | ~scored_BxL, axis=-1)


class SequenceScorer:
  """Scores lists of (tokens, scored) requests in batches of `rows` (a multiple of the data-parallel size)."""

  def __init__(self, graphdef, params, batch_sharding, rows: int, max_length: int):
    self.params, self.rows, self.max_length = params, rows, max_length
    self.batch_sharding = batch_sharding
    self._score = jax.jit(lambda p, *batch: _score_batch(graphdef, p, *batch))

  def __call__(self, requests: Sequence[tuple[Sequence[int], int]]) -> list[tuple[float, bool]]:
    """(log-likelihood, is greedy) per request, in the given order. Each sequence holds at most
    max_length + 1 tokens (the caller truncates from the left, as lm-eval's models do)."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    for start in range(0, len(order), self.rows):
      chosen = order[start : start + self.rows]
      for index, result in zip(chosen, self._score_rows([requests[i] for i in chosen]), strict=True):
        results[index] = result
    return results

  def _score_rows(self, batch: list[tuple[Sequence[int], int]]) -> list[tuple[float, bool]]:
    width = bucket_width(max(len(tokens) - 1 for tokens, _ in batch), self.max_length)
    inputs = np.zeros((self.rows, width), np.int32)
    targets = np.zeros((self.rows, width), np.int32)
    scored = np.zeros((self.rows, width), bool)
    for row, (tokens, count) in enumerate(batch):
      if not 0 < count < len(tokens) <= width + 1:
        raise ValueError(f"a request of {len(tokens)} tokens scoring {count} does not fit a row of {width}")
      n = len(tokens) - 1
      inputs[row, :n], targets[row, :n] = tokens[:-1], tokens[1:]
      scored[row, n - count : n] = True
    put = lambda x: jax.device_put(x, self.batch_sharding)
    sums, greedy = jax.device_get(self._score(self.params, put(inputs), put(targets), put(scored)))
    return [(float(sums[row]), bool(greedy[row])) for row in range(len(batch))]

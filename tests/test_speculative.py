"""Speculative decoding on tiny random models: greedy equals the target's own greedy decode token for token
(several draft lengths, rows that diverge at different places, a stop token inside an accepted block),
the caches after rollback equal a fresh prefill of the committed text, and the sampling rule's output is
distributed as the target's processed distribution (a seeded chi-square test), also with a draft whose
vocabulary is padded wider or narrower than the target's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from MaxText import pyconfig
from MaxText.inference.generate import generate
from MaxText.inference.sampling import Sampling
from MaxText.inference.speculative import speculative_generate
from MaxText.model import decoder as model_lib
from MaxText.model import kv_cache


def _model(seed: int, vocab: int = 320, **keys):
  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "vocab_size": vocab, "init_std": 0.3, **keys})
  graphdef, params, _ = model_lib.split_params(model_lib.Decoder(config, nnx.Rngs(seed)))
  return model_lib.bind(graphdef, params)


@pytest.fixture(scope="module")
def target():
  return _model(0)


@pytest.fixture(scope="module")
def draft(target):
  """The target with noise on every weight: it agrees with the target on some tokens, not on all."""
  graphdef, params = nnx.split(target)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(9), len(leaves))
  noisy = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, noisy))


@pytest.fixture(scope="module")
def prompts():
  tokens = np.zeros((4, 7), np.int32)
  rows = [[5, 77, 140, 9, 31, 200, 18], [260, 3], [11, 12, 13, 14], [7]]
  for row, ids in enumerate(rows):
    tokens[row, : len(ids)] = ids
  return jnp.asarray(tokens), jnp.asarray([len(r) for r in rows], jnp.int32)


GREEDY = Sampling()


def _run(target, draft, prompts, k, new=20, sampling=GREEDY, stop_ids=(), key=0):
  fn = jax.jit(lambda t, n, key: speculative_generate(target, draft, t, n, key, sampling, new, k, stop_ids))
  return fn(*prompts, jax.random.key(key))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_speculative_is_the_targets_greedy_decode(target, draft, prompts, k):
  plain = jax.jit(lambda t, n: generate(target, t, n, jax.random.key(0), Sampling(), 20))(*prompts)
  got, stats = _run(target, draft, prompts, k)
  np.testing.assert_array_equal(got.tokens_BxN, plain.tokens_BxN)
  np.testing.assert_array_equal(got.lengths_B, plain.lengths_B)
  assert np.all(stats.committed_B == 20) and np.all(stats.accepted_B <= stats.proposed_B)
  assert np.all(stats.committed_B <= stats.accepted_B + stats.target_calls_B)  # a round: its accepted + 1
  assert len(set(np.asarray(stats.accepted_B).tolist())) > 1  # the rows diverge from the draft at different places


def test_a_draft_with_a_wider_padded_vocabulary_never_proposes_the_ids_the_target_lacks(target, prompts):
  """The target's weights with 64 more output ids whose logits dwarf the rest: cut to the target's width it is
  still a perfect draft (every proposal kept), and greedy decoding is the target's."""
  graphdef, params = nnx.split(target)
  wide = _model(0, 384)
  wide_graphdef, wide_params = nnx.split(wide)
  padded = jax.tree.map(
    lambda w, x: jnp.pad(x, [(0, a - b) for a, b in zip(w.shape, x.shape, strict=True)], constant_values=50.0),
    wide_params,
    params,
  )
  plain = jax.jit(lambda t, n: generate(target, t, n, jax.random.key(0), Sampling(), 20))(*prompts)
  got, stats = _run(target, nnx.merge(wide_graphdef, padded), prompts, 3)
  np.testing.assert_array_equal(got.tokens_BxN, plain.tokens_BxN)
  np.testing.assert_array_equal(stats.accepted_B, stats.proposed_B)


def test_a_perfect_draft_is_accepted_whole_and_a_stop_inside_a_block_ends_its_row(target, prompts):
  plain = jax.jit(lambda t, n: generate(target, t, n, jax.random.key(0), Sampling(), 20))(*prompts)
  row0 = np.asarray(plain.tokens_BxN[0]).tolist()
  at = next(i for i in range(5, 20) if i % 5 and row0[i] not in row0[:i])  # inside row 0's second block or later
  stop = row0[at]
  want = jax.jit(lambda t, n: generate(target, t, n, jax.random.key(0), Sampling(), 20, (stop,)))(*prompts)
  got, stats = _run(target, target, prompts, 4, stop_ids=(stop,))
  np.testing.assert_array_equal(got.tokens_BxN, want.tokens_BxN)
  np.testing.assert_array_equal(got.lengths_B, want.lengths_B)
  assert got.lengths_B[0] == at + 1 and stats.committed_B[0] == at + 1
  np.testing.assert_array_equal(stats.accepted_B, stats.proposed_B)  # the target agrees with itself
  assert np.all(stats.target_calls_B == -(-got.lengths_B // 5))  # k + 1 tokens a target pass


def test_after_rollback_both_caches_hold_a_fresh_prefill_of_the_committed_text(target, draft, prompts):
  """Rejected proposals leave stale slots past the committed text, never before it."""
  from MaxText.inference import speculative

  tokens, lengths = prompts
  batch, slots = tokens.shape[0], 7 + 20 + 3 + 1
  positions = jnp.broadcast_to(jnp.arange(7), (batch, 7))
  caches = [
    kv_cache.extend(m, tokens, positions, kv_cache.init_cache(m.config, batch, slots))[1] for m in (target, draft)
  ]
  seq = jnp.zeros((batch, slots), jnp.int32).at[:, :7].set(tokens)
  proposals, _, draft_cache = speculative._propose(
    draft, caches[1], seq, lengths, jax.random.key(0), Sampling(), 3, 320
  )
  block = jnp.concatenate([seq[jnp.arange(batch), lengths - 1][:, None], proposals], axis=1)
  hidden, target_cache = kv_cache.extend(target, block, (lengths - 1)[:, None] + jnp.arange(4), caches[0])
  logits = kv_cache.logits_of(target, hidden.reshape(batch * 4, -1)).reshape(batch, 4, -1)
  accepted, new = speculative.verify(logits, proposals, None, jax.random.key(1), Sampling())
  for model, cache in ((target, target_cache), (draft, draft_cache)):
    for row in range(batch):
      n = int(lengths[row]) + int(accepted[row])  # committed text before the target's own token, fed next round
      text = np.concatenate([np.asarray(tokens[row, : lengths[row]]), np.asarray(new[row, : accepted[row]])])
      fresh = kv_cache.extend(
        model, jnp.asarray(text)[None], jnp.arange(len(text))[None], kv_cache.init_cache(model.config, 1, slots)
      )[1]
      upto = n if model is target else min(n, int(lengths[row]) + 2)  # the draft fed all its proposals but the last
      for got, want in zip(cache, fresh, strict=True):
        np.testing.assert_allclose(got[:, row, :upto], want[:, 0, :upto], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize(
  "sampling, draft_vocab",
  [
    (Sampling("weighted", 1.0), 6),
    (Sampling("topk", 0.8, 3), 6),
    (Sampling("nucleus", 1.2, 0, 0.7), 6),
    (Sampling("weighted", 1.0), 8),
    (Sampling("weighted", 1.0), 5),
  ],
  ids=["weighted", "topk", "nucleus", "weighted-wider-draft", "weighted-narrower-draft"],
)
def test_speculative_sampling_draws_from_the_targets_processed_distribution(sampling, draft_vocab):
  """The first two tokens of 20,000 rows against the exact joint distribution of the target's sampling
  (enumerated over a vocabulary of 6); chi-square at a false-alarm rate of 1e-3, fixed seed. A draft with
  a padded vocabulary (8 ids, or 5 where the target's is the padded one) leaves the distribution exact."""
  from scipy import stats as scipy_stats

  from MaxText.inference.sampling import truncated_logits

  vocab, rows = 6, 20_000
  target, draft = _model(0, vocab), _model(3, draft_vocab, emb_dim=16)
  prompt = jnp.asarray([[1, 4, 2]], jnp.int32)
  got, stats = jax.jit(
    lambda key: speculative_generate(
      target, draft, jnp.repeat(prompt, rows, 0), jnp.full(rows, 3, jnp.int32), key, sampling, 2, 2
    )
  )(jax.random.key(7))
  assert 0 < stats.accepted_B.sum() < stats.proposed_B.sum()  # both branches of the rule are taken
  first_two = np.asarray(got.tokens_BxN[:, :2])
  observed = np.bincount(first_two[:, 0] * vocab + first_two[:, 1], minlength=vocab * vocab)

  def probs(tokens):
    logits = target.logits(jnp.asarray(tokens)[None])[0, -1]
    return np.asarray(jax.nn.softmax(truncated_logits(logits[None], sampling)[0]), np.float64)

  p1 = probs([1, 4, 2])
  joint = np.concatenate([p1[a] * probs([1, 4, 2, a]) for a in range(vocab)])
  keep = joint > 0
  assert observed[~keep].sum() == 0  # nothing outside the processed support
  expected = joint[keep] * rows
  chi2 = np.sum((observed[keep] - expected) ** 2 / expected)
  assert scipy_stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3, (chi2, keep.sum())

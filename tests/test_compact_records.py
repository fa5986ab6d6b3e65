"""The compact cache record at the bit level: packing, Elias-Fano ids at the edges of the vocabulary,
-inf and tied logits, rows that are no targets, the exact tail mass, and the KL of a compact record
against a float64 reference on its decoded values."""

import numpy as np
import pytest

from MaxText.data import teacher_cache
from MaxText.data.compact_records import CompactLayout, EliasFano, RecordDamaged, ValueCode, pack_bits, unpack_bits


@pytest.mark.parametrize("width", [1, 5, 6, 8, 16, 17, 31])
def test_bit_packing_round_trips_the_extremes_of_each_width(width):
  rng = np.random.default_rng(width)
  values = np.concatenate([[0, (1 << width) - 1, 1], rng.integers(0, 1 << width, 997)])
  packed = pack_bits(values, width)
  assert len(packed) == (values.size * width + 7) // 8
  np.testing.assert_array_equal(unpack_bits(packed, values.size, width), values)


@pytest.mark.parametrize("vocab, k", [(2**16, 64), (2**17, 64), (49152, 64), (320, 320), (300, 1), (5, 4)])
def test_elias_fano_ids_round_trip_at_the_edges_of_the_vocabulary(vocab, k):
  rng = np.random.default_rng(vocab + k)
  rows = [rng.choice(vocab, k, replace=False) for _ in range(30)]
  rows += [np.arange(k), np.arange(vocab - k, vocab)]  # the first and the last ids
  ids = np.sort(np.stack(rows), axis=1)
  code = EliasFano(vocab, k)
  packed = code.encode(ids)
  assert len(packed) == code.size(len(rows))
  np.testing.assert_array_equal(code.decode(packed, len(rows)), ids)


def test_the_id_code_costs_about_two_bits_over_log2_of_vocab_per_k():
  for vocab, k, bits_per_id in [(49152, 64, 11.5), (128256, 64, 12.97)]:
    assert EliasFano(vocab, k).size(1000) * 8 / 64_000 == pytest.approx(bits_per_id, abs=0.01)


def _row(rng, length, k, vocab, temperatures):
  """A float record with packing, a prompt (targets_segmentation 0), padding, -inf logits and ties."""
  logits = rng.normal(0, 3, (length, vocab))
  logits[1, :] = np.where(np.arange(vocab) < k // 2, 5.0, -np.inf)  # half the top-k at -inf
  logits[2:4] -= 20.0
  logits[2, : k + 3] = 7.0  # tied at the maximum, more ties than k
  logits[3, [3, 9, 11]] = [9.0, 4.0, 4.0]  # a tie below the maximum
  ids = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # top_k's order: ties by the smaller id
  values = np.take_along_axis(logits, ids, 1)
  with np.errstate(divide="ignore"):
    lse = np.stack([np.log(np.sum(np.exp(logits / t), 1)) for t in temperatures])
  segmentation = np.array([1] * 10 + [2] * 12 + [0] * (length - 22))
  targets_segmentation = segmentation.copy()
  targets_segmentation[10:15] = 0  # the second document's prompt
  tokens = rng.integers(0, vocab, length)
  tokens[[0, 5]] = [vocab - 1, 0]
  targets = np.append(tokens[1:], 0)
  targets[[9, 21]] = [vocab - 1, 1]  # a document's last target is not the next input
  positions = np.concatenate([np.arange(10), np.arange(12), np.zeros(length - 22, int)])
  return {
    "inputs": tokens,
    "targets": targets,
    "inputs_position": positions,
    "inputs_segmentation": segmentation,
    "targets_segmentation": targets_segmentation,
    "teacher_values": values.astype(np.float32),
    "teacher_ids": ids.astype(np.int32),
    "teacher_lse": lse.astype(np.float32),
  }


@pytest.mark.parametrize("vocab", [2**16, 2**17, 97])
def test_a_record_round_trips_tokens_ids_ties_minus_inf_and_the_exact_tail(vocab):
  k, length, temperatures = 8, 32, (1.0, 2.0)
  row = _row(np.random.default_rng(vocab), length, k, vocab, temperatures)
  layout = CompactLayout(length, k, len(temperatures), vocab, temperatures)
  record = layout.encode(row)
  got = layout.decode(record)
  for name in teacher_cache.TOKEN_FIELDS:
    np.testing.assert_array_equal(got[name], row[name])
    assert got[name].dtype == np.int32
  target = row["targets_segmentation"] != 0
  assert len(record) < 0.5 * teacher_cache.RecordLayout(length, k, 2, "bfloat16").record_bytes
  ids, want_ids = got["teacher_ids"][target], row["teacher_ids"][target]
  np.testing.assert_array_equal(ids[:, 0], want_ids[:, 0])  # the top-1, ties broken as top_k breaks them
  np.testing.assert_array_equal(np.sort(ids, 1), np.sort(want_ids, 1))
  values = got["teacher_values"]
  assert not np.any(np.diff(values[target], axis=1) > 0)  # largest first (-inf - -inf is nan)
  assert np.sum(np.isneginf(values[1])) == k // 2 and np.all(np.isfinite(values[1, : k // 2]))
  assert np.all(values[2] == values[2, 0])  # tied at the maximum, still tied
  three = dict(zip(got["teacher_ids"][3], values[3], strict=True))
  assert three[9] == three[11] < three[3]  # tied below the maximum, still tied
  for column, t in enumerate(temperatures):
    kept = [
      np.sum(np.exp(r["teacher_values"][target].astype(np.float64) / t - r["teacher_lse"][column, target][:, None]), 1)
      for r in (got, row)
    ]
    np.testing.assert_allclose(kept[0], kept[1], rtol=1e-6)  # the OTHER bucket is the teacher's
  assert np.all(np.isfinite(values[~target])) and np.all(np.isfinite(got["teacher_lse"]))  # masked, and no NaN
  with pytest.raises(RecordDamaged):
    layout.decode(record[:-3])
  with pytest.raises(RecordDamaged):
    layout.decode(record + b"\0")


def test_the_value_code_puts_its_steps_where_the_mass_is():
  code = ValueCode()
  table = code.table()
  assert table[0] == 0 and table[-1] == pytest.approx(code.range) and len(table) == 63
  assert np.diff(table)[0] < 0.07 and np.all(np.diff(np.diff(table)) > 0)  # fine at the top, coarser below
  d = np.linspace(0, 20, 2001)
  decoded = code.decode(code.encode(d))
  g = lambda x: 1 - np.exp(-np.minimum(x, code.range) / code.scale)  # noqa: E731
  step = g(code.range) / (code.levels - 1)
  lifted = (d > 0) & (g(d) < step / 2)
  assert np.all(np.abs(g(d) - g(decoded))[~lifted] <= step / 2 + 1e-12) and np.all(decoded[lifted] == table[1])


def test_the_kl_of_a_compact_record_is_the_kl_of_its_decoded_values():
  """The training loss on a compact record against a float64 (k+1)-way KL of its decoded values."""
  import jax.numpy as jnp

  from MaxText.distill.cached_source import CachedTopKTeacher

  k, length, vocab, temperatures = 8, 32, 97, (1.0, 2.0)
  rng = np.random.default_rng(0)
  row = _row(rng, length, k, vocab, temperatures)
  layout = CompactLayout(length, k, len(temperatures), vocab, temperatures)
  got = layout.decode(layout.encode(row))
  target = row["targets_segmentation"] != 0
  student = rng.normal(0, 2, (length, vocab)).astype(np.float32)
  for column, t in enumerate(temperatures):
    source = CachedTopKTeacher("other_bucket", vocab, lse_index=column)
    batch = {name: jnp.asarray(got[name])[None] for name in ("teacher_values", "teacher_ids", "teacher_lse")}
    per_token = source.inputs(None, batch, None).per_token
    chunk = source.chunk(per_token, {})
    kl, _ = chunk.divergence(jnp.asarray(student), t)

    values, ids = got["teacher_values"].astype(np.float64), got["teacher_ids"]
    with np.errstate(divide="ignore", invalid="ignore"):  # -inf logits and the masked filler rows
      p = np.exp(values / t - got["teacher_lse"][column][:, None].astype(np.float64))
      q_all = np.exp(student / t - np.log(np.sum(np.exp(student.astype(np.float64) / t), 1, keepdims=True)))
      q = np.take_along_axis(q_all, ids, 1)
      p_other, q_other = 1 - p.sum(1), 1 - q.sum(1)
      terms = np.where(p > 0, p * np.log(p / q), 0.0)
      want = terms.sum(1) + p_other * np.log(p_other / q_other)
    np.testing.assert_allclose(np.asarray(kl)[target], want[target], rtol=2e-5, atol=2e-6)

"""The compact offline-cache record (cache format 3, `kd_offline_format=compact`): about a third of the
float record's bytes, decoded to the same fields a float record gives.

Per record of L positions, only the rows that are training targets (targets_segmentation != 0) carry the
teacher; the others decode to a flat filler that the loss masks out. Little-endian sections:
  header                  int32 [5]: target rows n, target exceptions, and the run counts of the three
                          position/segment fields
  positions, segments     runs: (start, value) int32 pairs; positions as runs of +1 steps
  inputs                  ceil(log2 V) bits each
  targets                 only where they differ from the next input: (index, id) pairs, int32 and id bits
  row maximum             bfloat16 [n]: the decoded logits are this minus the coded distances
  log-sum-exp             float32 [n_T, n]: see below
  ids                     Elias-Fano over the row's ids sorted ascending: about 2 + log2(V / k) bits each
                          (11.5 at V = 49152, k = 64; the width of the vocabulary would be 16), the order
                          being carried by the values
  values                  `bits` per id, in id order: the distance d >= 0 below the row's maximum through
                          the compander g(d) = 1 - exp(-d / SCALE), uniform on [0, g(RANGE)]; the all-ones
                          code is -inf (a logit that was -inf)

Why this code: an error e in a logit changes that token's probability by a factor exp(e), so what the KL
feels is e weighted by p ~ exp(-d); steps that grow as exp(d / SCALE) put the precision on the tokens that
carry the mass (step 0.06 at the top at 6 bits; bfloat16 spends 0.125 on every logit above 16).
Distances beyond RANGE are coded as RANGE (p below exp(-16) of the top token).

The tail stays exact: the stored log-sum-exp is not the teacher's but the one that gives the decoded
logits the teacher's exact kept mass sum_I p_i at each stored temperature, so the OTHER bucket
(1 - kept) is the teacher's and the (k+1)-way target of the decoded values is a distribution.
The top-1 id is exact: only exact ties with the maximum get the top code, and decoding orders by code
then id, as `jax.lax.top_k` orders ties.
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np

SCALE = 4.0
RANGE = 16.0
DEFAULT_BITS = 6
_HEADER = 5


class RecordDamaged(ValueError):
  """A compact record whose sections do not add up."""


def bit_width(largest: int) -> int:
  """Bits that hold every value in [0, largest]."""
  return max(int(largest).bit_length(), 1)


def pack_bits(values: np.ndarray, width: int) -> bytes:
  """The low `width` bits of each non-negative value, one after another, least significant first."""
  if width == 0 or values.size == 0:
    return b""
  bits = (values.astype(np.uint64).reshape(-1, 1) >> np.arange(width, dtype=np.uint64)) & np.uint64(1)
  return np.packbits(bits.astype(np.uint8).ravel(), bitorder="little").tobytes()


def unpack_bits(buffer: bytes, count: int, width: int) -> np.ndarray:
  if width == 0 or count == 0:
    return np.zeros(count, np.int64)
  bits = np.unpackbits(np.frombuffer(buffer, np.uint8), count=count * width, bitorder="little")
  return bits.reshape(count, width).astype(np.int64) @ (np.int64(1) << np.arange(width, dtype=np.int64))


def packed_size(count: int, width: int) -> int:
  return (count * width + 7) // 8


@dataclasses.dataclass(frozen=True)
class EliasFano:
  """Rows of k sorted ids in [0, vocab): fixed size per row, decoded for all rows at once."""

  vocab: int
  k: int

  @property
  def low_bits(self) -> int:
    return max(int(np.floor(np.log2(self.vocab / self.k))), 0) if self.vocab > self.k else 0

  @property
  def upper_bits(self) -> int:  # one set bit per id at (id >> low_bits) + its rank
    return self.k + ((self.vocab - 1) >> self.low_bits) + 1

  def size(self, rows: int) -> int:
    return packed_size(rows * self.k, self.low_bits) + packed_size(rows * self.upper_bits, 1)

  def encode(self, sorted_ids_NxK: np.ndarray) -> bytes:
    rows = sorted_ids_NxK.shape[0]
    low = pack_bits(sorted_ids_NxK & ((1 << self.low_bits) - 1), self.low_bits)
    upper = np.zeros((rows, self.upper_bits), np.uint8)
    upper[np.arange(rows)[:, None], (sorted_ids_NxK >> self.low_bits) + np.arange(self.k)] = 1
    return low + np.packbits(upper.ravel(), bitorder="little").tobytes()

  def decode(self, buffer: bytes, rows: int) -> np.ndarray:
    split = packed_size(rows * self.k, self.low_bits)
    low = unpack_bits(buffer[:split], rows * self.k, self.low_bits).reshape(rows, self.k)
    upper = np.unpackbits(np.frombuffer(buffer[split:], np.uint8), count=rows * self.upper_bits, bitorder="little")
    row_of, column = np.nonzero(upper.reshape(rows, self.upper_bits))
    if column.size != rows * self.k or np.any(np.bincount(row_of, minlength=rows) != self.k):
      raise RecordDamaged("the id section does not hold k ids per row")
    high = column.reshape(rows, self.k) - np.arange(self.k)
    return (high << self.low_bits) | low


@dataclasses.dataclass(frozen=True)
class ValueCode:
  """Distances below the row maximum in `bits` bits through g(d) = 1 - exp(-d / scale) (module docstring)."""

  bits: int = DEFAULT_BITS
  scale: float = SCALE
  range: float = RANGE

  @property
  def minus_inf(self) -> int:
    return (1 << self.bits) - 1

  @property
  def levels(self) -> int:  # finite codes 0 .. levels - 1
    return self.minus_inf

  def table(self) -> np.ndarray:
    """Decoded distance of each finite code."""
    g_top = 1.0 - np.exp(-self.range / self.scale)
    return -self.scale * np.log1p(-np.arange(self.levels) / (self.levels - 1) * g_top)

  def encode(self, distance_NxK: np.ndarray) -> np.ndarray:
    """Codes of distances >= 0 (inf for -inf logits); a code 0 only for an exact tie with the maximum."""
    g_top = 1.0 - np.exp(-self.range / self.scale)
    finite = np.isfinite(distance_NxK)
    d = np.where(finite, np.minimum(distance_NxK, self.range), 0.0)
    code = np.rint((1.0 - np.exp(-d / self.scale)) / g_top * (self.levels - 1)).astype(np.int64)
    code = np.where((code == 0) & (d > 0), 1, code)  # keeps the top-1 id exact (module docstring)
    return np.where(finite, code, self.minus_inf)

  def decode(self, code_NxK: np.ndarray) -> np.ndarray:
    distance = np.concatenate([self.table(), [np.inf]])
    return distance[code_NxK]


def _runs(x: np.ndarray, step: int) -> np.ndarray:
  """[(start, value)] of the runs where x grows by `step` from one position to the next."""
  starts = np.flatnonzero(np.diff(x) != step) + 1
  starts = np.concatenate([[0], starts]).astype(np.int32)
  return np.stack([starts, x[starts].astype(np.int32)], axis=1)


def _from_runs(runs: np.ndarray, length: int, step: int) -> np.ndarray:
  starts, values = runs[:, 0].astype(np.int64), runs[:, 1].astype(np.int64)
  run_of = np.searchsorted(starts, np.arange(length), side="right") - 1
  return (values[run_of] + step * (np.arange(length) - starts[run_of])).astype(np.int32)


_RUN_FIELDS = (("inputs_position", 1), ("inputs_segmentation", 0), ("targets_segmentation", 0))


@dataclasses.dataclass(frozen=True)
class CompactLayout:
  """Encodes and decodes one record; `decode` gives what RecordLayout.decode gives, values in float32."""

  length: int
  top_k: int
  num_temperatures: int
  vocab: int
  temperatures: tuple[float, ...]
  code: ValueCode = ValueCode()

  @property
  def ids(self) -> EliasFano:
    return EliasFano(self.vocab, self.top_k)

  @property
  def token_bits(self) -> int:
    return bit_width(self.vocab - 1)

  def encode(self, row: dict[str, np.ndarray]) -> bytes:
    tokens = {name: np.asarray(row[name]).astype(np.int64) for name in ("inputs", "targets")}
    runs = [_runs(np.asarray(row[name]), step) for name, step in _RUN_FIELDS]
    exceptions = np.flatnonzero(np.append(tokens["targets"][:-1] != tokens["inputs"][1:], True))
    target_rows = np.flatnonzero(np.asarray(row["targets_segmentation"]) != 0)
    header = np.array([target_rows.size, exceptions.size, *(len(r) for r in runs)], np.int32)
    parts = [header.tobytes(), *(r.tobytes() for r in runs), pack_bits(tokens["inputs"], self.token_bits)]
    parts += [exceptions.astype(np.int32).tobytes(), pack_bits(tokens["targets"][exceptions], self.token_bits)]
    parts += self._encode_teacher(row, target_rows)
    return b"".join(parts)

  def _encode_teacher(self, row: dict, target_rows: np.ndarray) -> list[bytes]:
    values = np.asarray(row["teacher_values"], np.float64)[target_rows]
    ids = np.asarray(row["teacher_ids"], np.int64)[target_rows]
    lse_TxN = np.asarray(row["teacher_lse"], np.float64)[:, target_rows]
    order = np.argsort(ids, axis=1, kind="stable")
    ids, values = np.take_along_axis(ids, order, 1), np.take_along_axis(values, order, 1)
    top = np.max(values, axis=1, keepdims=True)
    codes = self.code.encode(top - values)
    top_bf16 = top[:, 0].astype(ml_dtypes.bfloat16)
    decoded = self._logits(top_bf16, codes)
    temps = np.asarray(self.temperatures, np.float64)[:, None, None]
    with np.errstate(divide="ignore"):  # exp(-inf) = 0 is meant
      kept_TxN = np.sum(np.exp(values[None] / temps - lse_TxN[:, :, None]), axis=2)
      lse_TxN = _logsumexp(decoded[None] / temps) - np.log(kept_TxN)
    return [
      top_bf16.tobytes(),
      lse_TxN.astype(np.float32).tobytes(),
      self.ids.encode(ids),
      pack_bits(codes, self.code.bits),
    ]

  def _logits(self, top_bf16: np.ndarray, codes_NxK: np.ndarray) -> np.ndarray:
    return (top_bf16.astype(np.float32)[:, None] - self.code.decode(codes_NxK).astype(np.float32)).astype(np.float32)

  def decode(self, record: bytes) -> dict[str, np.ndarray]:
    try:
      return self._decode(record)
    except (ValueError, IndexError) as e:
      raise RecordDamaged(f"a compact record does not decode ({e})") from None

  def _decode(self, record: bytes) -> dict[str, np.ndarray]:
    reader = _Reader(record)
    rows, num_exceptions, *run_counts = reader.array(np.int32, _HEADER)
    out = {
      name: _from_runs(reader.array(np.int32, 2 * count).reshape(count, 2), self.length, step)
      for (name, step), count in zip(_RUN_FIELDS, run_counts, strict=True)
    }
    inputs = unpack_bits(reader.take(packed_size(self.length, self.token_bits)), self.length, self.token_bits)
    exceptions = reader.array(np.int32, num_exceptions)
    targets = np.append(inputs[1:], 0)
    targets[exceptions] = unpack_bits(
      reader.take(packed_size(num_exceptions, self.token_bits)), num_exceptions, self.token_bits
    )
    out["inputs"], out["targets"] = inputs.astype(np.int32), targets.astype(np.int32)
    target_rows = np.flatnonzero(out["targets_segmentation"] != 0)
    if target_rows.size != rows:
      raise RecordDamaged("the target rows do not match the segmentation")
    out.update(self._decode_teacher(reader, target_rows))
    if reader.offset != len(record):
      raise RecordDamaged(f"{len(record) - reader.offset} bytes left over")
    return out

  def _decode_teacher(self, reader: _Reader, target_rows: np.ndarray) -> dict[str, np.ndarray]:
    n, k, length = target_rows.size, self.top_k, self.length
    top_bf16 = reader.array(ml_dtypes.bfloat16, n)
    lse_TxN = reader.array(np.float32, self.num_temperatures * n).reshape(self.num_temperatures, n)
    ids = self.ids.decode(reader.take(self.ids.size(n)), n)
    codes = unpack_bits(reader.take(packed_size(n * k, self.code.bits)), n * k, self.code.bits).reshape(n, k)
    order = np.lexsort((ids, codes), axis=1)  # value descending = code ascending, ties by id (as top_k)
    filler_lse = np.log(k) / np.asarray(self.temperatures, np.float32)[:, None]  # p = 1/k: masked anyway
    values, all_ids = np.zeros((length, k), np.float32), np.tile(np.arange(k, dtype=np.int32), (length, 1))
    lse = np.broadcast_to(filler_lse, (self.num_temperatures, length)).astype(np.float32)
    values[target_rows] = np.take_along_axis(self._logits(top_bf16, codes), order, 1)
    all_ids[target_rows] = np.take_along_axis(ids, order, 1)
    lse[:, target_rows] = lse_TxN
    return {"teacher_values": values, "teacher_ids": all_ids, "teacher_lse": lse}


def _logsumexp(x: np.ndarray) -> np.ndarray:
  top = np.max(x, axis=-1, keepdims=True)
  return top[..., 0] + np.log(np.sum(np.exp(x - top), axis=-1))


class _Reader:
  def __init__(self, record: bytes):
    self.record, self.offset = record, 0

  def take(self, size: int) -> bytes:
    if self.offset + size > len(self.record):
      raise RecordDamaged("the record is shorter than its sections")
    part = self.record[self.offset : self.offset + size]
    self.offset += size
    return part

  def array(self, dtype, count: int) -> np.ndarray:
    return np.frombuffer(self.take(count * np.dtype(dtype).itemsize), dtype)

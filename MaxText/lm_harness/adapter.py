"""The `maxtext` model of EleutherAI's lm-evaluation-harness: any model this project loads (a run's step
folder, a converted Hugging Face or GGUF folder, a pruned student) scored by lm-eval's tasks.

  python -m MaxText.run_lm_eval --model maxtext --model_args load_parameters_path=CKPT --tasks ... \
      [--include_path evals] [--batch_size 8]
  lm_eval.simple_evaluate(model=MaxTextLM(load_parameters_path=CKPT), tasks=[...])

Tokenization, truncation, the empty-context prefix token and the stop sequences follow lm-eval's own
`hf` model, so the two agree request by request on the same weights (tests/test_lm_harness.py):
- loglikelihood / loglikelihood_rolling: the project's forward pass on the mesh, exact float32
  log-probs of the scored tokens (scoring.py);
- generate_until: the KV-cached generator (greedy), cut at the first stop sequence, the tokenizer's
  end-of-sequence token among them.
Model args: load_parameters_path (required), max_length (default 2048, lm-eval's own default),
max_gen_toks (256), add_bos_token, and any config key (dtype defaults to float32 here: scores are
compared across models, so bfloat16 activations are opt-in).
"""

from __future__ import annotations

import jax
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from MaxText.config import ConfigError, load
from MaxText.config.paths import check_exists
from MaxText.config.saved_files import with_saved_model_keys
from MaxText.data import chat
from MaxText.data.tokenizer import HuggingFaceTokenizer, build_tokenizer, check_fits_model
from MaxText.inference.runner import BatchGenerator, load_draft
from MaxText.lm_harness.scoring import SequenceScorer, bucket_width
from MaxText.model import decoder
from MaxText.model.params_io import load_params
from MaxText.parallel import sharding

DEFAULT_MAX_LENGTH = 2048  # lm-eval's `hf` model's own fallback when a model declares none
_ADAPTER_DEFAULTS = {"dtype": "float32"}
_FORCED = {"decode_sampling_strategy": "greedy"}


def load_model_config(load_parameters_path: str, keys: dict):
  """The config of a saved model: its saved model and tokenizer keys, then `keys` (config keys)."""
  argv = ["base.yml", f"load_parameters_path={load_parameters_path}"]
  argv += [f"{k}={v}" for k, v in {**_ADAPTER_DEFAULTS, **keys}.items()]
  first = load(argv, _FORCED)
  if not first.load_parameters_path:
    raise ConfigError("load_parameters_path: the model to evaluate must be given (model_args)")
  check_exists("load_parameters_path", first.load_parameters_path)
  return with_saved_model_keys(argv, first, _FORCED)


@register_model("maxtext")
class MaxTextLM(TemplateLM):
  """lm-eval's LM interface over a loaded model (single process; the mesh spans this host's devices)."""

  def __init__(
    self,
    load_parameters_path: str = "",
    batch_size: int | str | None = None,
    max_batch_size: int | None = None,
    device: str | None = None,
    max_length: int | None = None,
    max_gen_toks: int = 256,
    add_bos_token: bool | None = None,
    **config_keys,
  ):
    super().__init__()
    del max_batch_size, device  # lm-eval's CLI passes them to every model; JAX places the arrays itself
    config = load_model_config(load_parameters_path, config_keys)
    tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_path)
    check_fits_model(tokenizer, config.vocab_size)
    mesh = sharding.create_mesh(config)
    graphdef, abstract, axes = decoder.split_params(decoder.abstract_model(config))
    params = load_params(config.load_parameters_path, abstract, sharding.logical_shardings(axes, abstract, mesh))
    self.setup(config, tokenizer, mesh, graphdef, params, batch_size, max_length, max_gen_toks, add_bos_token)

  @classmethod
  def from_loaded(cls, config, tokenizer, mesh, graphdef, params, **options) -> MaxTextLM:
    """An adapter over parameters already in memory (a training run scoring tasks at its eval steps)."""
    lm = cls.__new__(cls)
    TemplateLM.__init__(lm)
    lm.setup(config, tokenizer, mesh, graphdef, params, **options)
    return lm

  def setup(
    self,
    config,
    tokenizer,
    mesh,
    graphdef,
    params,
    batch_size=None,
    max_length=None,
    max_gen_toks=256,
    add_bos_token=None,
  ) -> None:
    self.config, self.tok, self.mesh, self.graphdef, self.params = config, tokenizer, mesh, graphdef, params
    self.add_bos_token = add_bos_token
    self._max_length = int(max_length) if max_length else DEFAULT_MAX_LENGTH
    self.max_gen_toks = int(max_gen_toks)
    wanted = int(batch_size) if str(batch_size or "").isdigit() else jax.device_count()
    self.rows = -(-max(wanted, 1) // jax.device_count()) * jax.device_count()  # whole rows per device
    self.scorer = SequenceScorer(graphdef, params, sharding.batch_sharding(mesh), self.rows, self._max_length)
    self._generators: dict[int, BatchGenerator] = {}
    self._draft = load_draft(config, mesh)  # decode_draft_parameters_path: generate_until speculatively (same text)

  def use_params(self, params) -> None:
    """Scores the given parameters from now on (a training run's current state, at each eval step)."""
    self.params = self.scorer.params = params
    for generator in self._generators.values():
      generator.params = params

  # -- what lm-eval asks of a model ---------------------------------------------------------------
  @property
  def eot_token_id(self) -> int:
    return self.tok.eos_id

  @property
  def prefix_token_id(self) -> int:
    return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def tokenizer_name(self) -> str:
    return str(self.config.tokenizer_path or self.config.tokenizer_type).replace("/", "__")

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None, **kwargs):
    if add_special_tokens is None:  # as lm-eval's `hf`: add_bos_token, else the tokenizer's own default
      add_special_tokens = True if self.add_bos_token is None else self.add_bos_token
      if self.tok.bos_id is not None and string.startswith(self._token_text(self.tok.bos_id)):
        add_special_tokens = False
    ids = self._encode(string, add_special_tokens)
    return ids[-left_truncate_len:] if left_truncate_len else ids

  def _encode(self, string: str, add_special_tokens: bool) -> list[int]:
    if isinstance(self.tok, HuggingFaceTokenizer):
      return self.tok.encode(string, add_special_tokens=add_special_tokens)
    ids = self.tok.encode(string)  # sentencepiece / byte: the special token a model adds is its BOS
    wants_bos = add_special_tokens and self.add_bos_token and self.tok.bos_id is not None
    return [self.tok.bos_id, *ids] if wants_bos else ids

  def _token_text(self, token_id: int) -> str:
    as_token = getattr(self.tok, "id_to_token", None)
    return as_token(token_id) if as_token is not None else self.tok.decode([token_id])

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
    rows = []
    for _, context, continuation in requests:
      whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
      rows.append((whole, len(continuation)))
    with jax.set_mesh(self.mesh):
      results = self.scorer(rows)
    for (key, _, _), result in zip(requests, results, strict=True):
      if key is not None:
        self.cache_hook.add_partial("loglikelihood", key, result)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    windows, owners = [], []
    for index, (string,) in enumerate(tqdm([r.args for r in requests], disable=disable_tqdm)):
      token_windows = get_rolling_token_windows(
        token_list=self.tok_encode(string),
        prefix_token=self.prefix_token_id,
        max_seq_len=self.max_length,
        context_len=1,
      )
      for context, continuation in map(make_disjoint_window, token_windows):
        windows.append((None, context, continuation))
        owners.append(index)
    totals = [0.0] * len(requests)
    for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows), strict=True):
      totals[owner] += logprob
    for request, total in zip(requests, totals, strict=True):
      self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    eos = (self._token_text(self.tok.eos_id) or None) if self.tok.eos_id is not None else None
    results: list[str | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
      groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
    for indices in groups.values():
      kwargs = normalize_gen_kwargs(dict(requests[indices[0]].args[1]), self.max_gen_toks)
      if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) > 0:
        raise ConfigError("generation_kwargs: the maxtext model generates greedily (do_sample: false)")
      until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
      new_tokens = kwargs["max_gen_toks"]
      prompts = [self.tok_encode(requests[i].args[0], left_truncate_len=self.max_length - new_tokens) for i in indices]
      for index, text in zip(indices, self._generate(prompts, new_tokens), strict=True):
        results[index] = postprocess_generated_text(generation=text, stop=until, think_end_token=None)
        self.cache_hook.add_partial("generate_until", requests[index].args, results[index])
    return results

  def _generate(self, prompts: list[list[int]], new_tokens: int) -> list[str]:
    if new_tokens not in self._generators:
      stops = (self.tok.eos_id,) if self.tok.eos_id is not None else ()
      width = lambda longest: bucket_width(longest, self.max_length)
      pad_id = getattr(self.tok, "pad_id", 0)
      self._generators[new_tokens] = BatchGenerator(
        self.config, self.graphdef, self.params, self.rows, stops, pad_id, new_tokens, width, draft=self._draft
      )
    generator, texts = self._generators[new_tokens], []
    with jax.set_mesh(self.mesh):
      for start in range(0, len(prompts), self.rows):
        for ids, stopped in generator(prompts[start : start + self.rows], jax.random.key(0)):
          texts.append(self.tok.decode(ids[:-1] if stopped else ids))
    return texts

  def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    template = chat.read_chat_template(self.config.tokenizer_path)
    return chat.render(*template, chat_history, add_generation_prompt=add_generation_prompt)

  def chat_template(self, chat_template: bool | str = False) -> str | None:
    if not chat_template:
      return None
    return chat.read_chat_template(self.config.tokenizer_path)[0]

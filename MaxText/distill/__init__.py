"""Distillation: schedules, teacher sources (live, cached top-k), the one per-chunk KD assembly, the
feature head, and the objective every run trains with."""

"""lm-evaluation-harness on this project's models: exact scoring of token rows (scoring.py), the `maxtext`
model adapter (adapter.py, imports lm_eval) and the offline cloze task's construction (cloze.py)."""

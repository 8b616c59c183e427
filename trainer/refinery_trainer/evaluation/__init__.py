"""Evaluation of finished models: held-out generation scores (`generative.py`), the
lm-evaluation-harness adapter (`harness.py`), and completion statistics shared with rlhf
(`completions.py`)."""

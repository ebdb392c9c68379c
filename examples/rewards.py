"""Reward functions for ``examples/tiny_grpo.yaml`` (GRPO), given to the trainer by import
path (``examples.rewards:digit_share``; run from the repository root, or put this folder
on ``PYTHONPATH`` and name it ``rewards:digit_share``).

trl calls a reward function with the prompts, the sampled completions and the other
columns of the rows (here ``answer``) as keyword arguments; it returns one number per
completion.
"""


def digit_share(prompts, completions, **kwargs):
    """The share of a completion's characters that are digits."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def starts_with_answer(prompts, completions, answer, weight=1.0, **kwargs):
    """``weight`` when the completion starts with the row's ``answer``, else 0."""
    return [weight * float(c.strip().startswith(a)) for c, a in zip(completions, answer)]

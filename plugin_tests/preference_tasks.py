"""Made-up preference, feedback and reward tasks where generalisation is possible.

The rule of the preference tasks: a prompt starting with ``d`` wants an answer of digits,
one starting with ``l`` an answer of letters. Bodies are random, so held-out pairs have
prompts and answers never seen in training. Half the pairs want digits and half letters:
whatever the random model's bias between the two, it starts near chance (0.5).
"""

from __future__ import annotations

import random
import string
import typing as t

Pair = t.Tuple[str, str, str]


def _word(rng: random.Random, alphabet: str, n: int = 3) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def pairs(n: int, seed: int) -> t.List[Pair]:
    """``n`` (prompt, chosen, rejected) triples following the rule (half of each kind)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        digits, letters = _word(rng, string.digits), _word(rng, string.ascii_lowercase)
        if i % 2 == 0:
            out.append((f"d{_word(rng, 'xyz', 2)}:", digits, letters))
        else:
            out.append((f"l{_word(rng, 'xyz', 2)}:", letters, digits))
    return out


def thumbs(n: int, seed: int) -> t.List[t.Tuple[str, str, bool]]:
    """Unpaired feedback from :func:`pairs`: the chosen answer up, the rejected one down,
    for different prompts (each prompt gets one row)."""
    out = []
    for i, (prompt, chosen, rejected) in enumerate(pairs(n, seed)):
        out.append((prompt, chosen, True) if i % 4 < 2 else (prompt, rejected, False))
    return out


def prompts(n: int, seed: int) -> t.List[str]:
    """Prompts for GRPO (random, no rule)."""
    rng = random.Random(seed)
    return [f"q{_word(rng, string.ascii_lowercase, 3)}:" for _ in range(n)]


# -- reward functions (importable by path: "plugin_tests.preference_tasks:digit_share") --
def digit_share(prompts, completions, **kwargs) -> t.List[float]:
    """The share of a completion's characters that are digits (0 for an empty one)."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def matches_answer(prompts, completions, answer, weight=1.0, **kwargs) -> t.List[float]:
    """``weight`` when the completion starts with the row's ``answer`` column, else 0."""
    return [weight * float(c.strip().startswith(a)) for c, a in zip(completions, answer)]


def wrong_count(prompts, completions, **kwargs):
    """Returns one reward too few (refused by the preflight)."""
    return [0.0] * (len(completions) - 1)


def raises(prompts, completions, **kwargs):
    """Fails (refused by the preflight, with its error)."""
    raise KeyError("answer")


NOT_A_FUNCTION = 3


# -- measures ---------------------------------------------------------------------
def logp(llm, prompt: str, answer: str, eos: bool = True) -> float:
    """The model's log-probability of ``answer`` (with its EOS, as trl scores a
    completion) after ``prompt``."""
    import torch

    model, tokenizer = llm._get_pipeline()
    n = len(tokenizer(prompt)["input_ids"])
    ids = tokenizer(prompt + answer + (tokenizer.eos_token if eos else ""), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    return float(torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[n - 1 :].sum())


def preferred(llm, triples: t.Sequence[Pair]) -> float:
    """Share of triples where the model gives the chosen answer the higher :func:`logp`."""
    wins = sum(logp(llm, p, chosen) > logp(llm, p, rejected) for p, chosen, rejected in triples)
    return wins / len(triples)


def mean_reward(llm, texts: t.Sequence[str], samples: int = 4, max_new_tokens: int = 6) -> float:
    """Mean :func:`digit_share` of ``samples`` sampled completions per prompt (seeded)."""
    import torch

    torch.manual_seed(0)
    outs = llm.predict_batches(
        [p for p in texts for _ in range(samples)], do_sample=True, max_new_tokens=max_new_tokens
    )
    return sum(digit_share(None, outs)) / len(outs)

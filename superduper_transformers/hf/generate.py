"""Greedy generations from a model in training (sample answers recorded at evaluations)."""

from __future__ import annotations

import typing as t


def generate_texts(
    model: t.Any, tokenizer: t.Any, prompts: t.Sequence[str], add_special_tokens: bool, **generate_kwargs
) -> t.List[str]:
    """The continuations of ``prompts`` (new text only), left-padded in one ``generate`` call.

    The model is put in eval mode for the call and back in its mode after: it is
    the model being trained.

    :param model: A causal LM (or its peft wrapper).
    :param tokenizer: Its tokenizer.
    :param prompts: Texts formatted as in training.
    :param add_special_tokens: As the training rows were encoded (False with a chat template).
    :param generate_kwargs: ``generate`` settings (``max_new_tokens``, ...).
    """
    import torch

    side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(
            list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
        )
        batch = {k: v.to(model.device) for k, v in batch.items()}
        generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        model.eval()
        with torch.no_grad():
            out = model.generate(**batch, **generate_kwargs)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)

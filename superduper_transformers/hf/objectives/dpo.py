"""Direct preference optimisation (trl's ``DPOTrainer``): prefer ``chosen`` to ``rejected``.

With LoRA the reference model is the starting point with the adapter disabled (trl does
this for a peft model given no ``ref_model``): no second copy of the weights. Its loss
variants are trl's ``loss_type`` (``sigmoid``, ``ipo``, ``sigmoid_norm`` (SimPO), ...).

Rows hold text, or conversations: the prompt as a list of messages and each answer as a
list of assistant messages (or text). Conversations, and text rows with
``setup_chat_format``, are rendered with the chat template as SFT chat rows are (ChatML
when the tokenizer has none), so that ``predict`` sees the prompt it was trained on.
"""

from __future__ import annotations

import typing as t

from superduper_transformers.hf.data import (
    DataError,
    conversation_issue,
    format_prompt,
    is_conversation,
    render_chat,
)
from superduper_transformers.hf.objectives import Objective, check_text, rows_of, text_dataset

#: The columns of a preference row, in the order of the trainer's ``key``.
COLUMNS = ("prompt", "chosen", "rejected")


class DPO(Objective):
    """Rows of (prompt, chosen, rejected); ``key`` names the three columns in that order."""

    name = "dpo"
    config_class = "trl:DPOConfig"
    trainer_class = "trl:DPOTrainer"
    default_key = COLUMNS
    eval_metrics = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")

    def check_rows(self, rows, columns, where, start=0):
        """Text or conversations in every column, and a chosen answer unlike the rejected one."""
        p, chosen, rejected = columns
        text = [k for k in columns if not any(is_conversation(r.get(k)) for r in rows)]
        check_text(rows, text, where, start)
        for i, row in enumerate(rows, start):
            for k in [k for k in columns if k not in text]:
                issue = "is missing" if k not in row else _message_issue(row[k], answer=k != p)
                if issue:
                    raise DataError(
                        f"Key `{k}` of row {i} of the {where} {issue}. Give text, or a list of messages "
                        'such as [{"role": "user", "content": "..."}] for the prompt and '
                        '[{"role": "assistant", "content": "..."}] for an answer.'
                    )
            if row[chosen] == row[rejected]:
                raise DataError(
                    f"Row {i} of the {where} has the same `{chosen}` and `{rejected}` text "
                    f"({row[chosen]!r:.60}): a preference needs two different answers. Fix or "
                    "remove the row."
                )

    def build_dataset(self, tokenizer, rows, columns, tokenization, fingerprint, owner=None):
        """Columns ``prompt``/``chosen``/``rejected`` as text (trl tokenizes them; nothing cached)."""
        p, c, r = columns
        template = tokenization.get("prompt_template") or "{input}"
        chat = bool(tokenization.get("chat_format"))

        def example(row):
            prompt, chosen, rejected = preference_texts(tokenizer, row[p], [row[c], row[r]], template, chat)
            return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

        return text_dataset(example(row) for row in rows_of(rows))


def _message_issue(value: t.Any, answer: bool) -> t.Optional[str]:
    if not is_conversation(value):
        return None if isinstance(value, str) and value else f"holds {value!r:.60}, not text or messages"
    issue = conversation_issue(value, need_assistant=answer)
    if issue is None and answer and any(m["role"] != "assistant" for m in value):
        issue = "has a message that is not the assistant's: an answer holds assistant messages only"
    return issue


def preference_texts(tokenizer, prompt, answers: t.Sequence, template: str, chat: bool) -> t.Tuple[str, ...]:
    """The prompt and each answer as the model sees them: plain text, or rendered with the
    chat template (conversations, or text with ``setup_chat_format``), the answers being
    what the template writes after the prompt's generation prompt."""
    if not (chat or is_conversation(prompt) or any(is_conversation(a) for a in answers)):
        return (format_prompt(template, prompt), *answers)
    messages = (
        prompt if is_conversation(prompt) else [{"role": "user", "content": format_prompt(template, prompt)}]
    )
    head = render_chat(tokenizer, messages, add_generation_prompt=True)
    out = [head]
    for answer in answers:
        turns = answer if is_conversation(answer) else [{"role": "assistant", "content": answer}]
        full = render_chat(tokenizer, [*messages, *turns])
        if not full.startswith(head):
            raise DataError(
                "The chat template does not render the prompt of a conversation as the start of the "
                "whole, so the answer cannot be cut from it. Use a template that renders every turn "
                "the same whatever follows it (e.g. ChatML)."
            )
        out.append(full[len(head) :])
    return tuple(out)

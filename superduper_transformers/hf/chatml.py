"""ChatML rendered in Python: the text of the fallback chat template without Jinja.

:data:`TEMPLATE` is the chat template a tokenizer without one of its own is given. It
writes each message as ``<|im_start|>{role}\\n{content}<|im_end|>\\n``, and the
generation prompt as ``<|im_start|>assistant\\n``; :func:`render` writes the same text
with string joins, so that tokenizing conversations does not pay transformers' chat
template machinery (about 24 µs of CPU a render of a short conversation, against
1 µs here, and three renders per reply) for a template
known in advance. Only plain conversations (every role and content a ``str``, no
tools) are rendered here; anything else goes through the template itself.
"""

from __future__ import annotations

import typing as t

#: ChatML, used by ``setup_chat_format`` when the tokenizer has no chat template of its own.
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_GENERATION_PROMPT = "<|im_start|>assistant\n"


def render(messages: t.Sequence[t.Any]) -> t.Optional[t.Tuple[str, t.List[t.Tuple[int, int]]]]:
    """The conversation as :data:`TEMPLATE` renders it, and for each assistant message the
    lengths of two prefixes of that text: the conversation before it with the generation
    prompt, and the conversation up to it (what the template renders for those prefixes).

    :param messages: Messages (dicts with ``role`` and ``content``).
    :return: None when a message's role or content is not exactly a ``str`` (the template
        then decides how it is written).
    """
    parts, replies, length = [], [], 0
    for message in messages:
        if not isinstance(message, dict):
            return None
        role, content = message.get("role"), message.get("content")
        if type(role) is not str or type(content) is not str:  # noqa: E721 (a str subclass may render otherwise)
            return None
        part = f"<|im_start|>{role}\n{content}<|im_end|>\n"
        if role == "assistant":
            replies.append((length + len(_GENERATION_PROMPT), length + len(part)))
        parts.append(part)
        length += len(part)
    return "".join(parts), replies

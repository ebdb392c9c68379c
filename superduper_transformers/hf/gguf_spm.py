"""A SentencePiece tokenizer (Llama 2, TinyLlama, Mistral v0.1) as llama.cpp's ``llama`` vocabulary.

llama.cpp's converter (``_set_vocab_sentencepiece``) reads the ``tokenizer.model`` protobuf:
every piece with its score and type, padded to the embedding's rows with ``[PAD<id>]``. A
trained ``LLM`` holds the fast tokenizer instead, which transformers builds from that protobuf
as a byte-fallback BPE whose merges are ordered by the pieces' scores. This module writes the
same metadata from it:

- **scores**: llama.cpp tokenizes a SentencePiece vocabulary by merging, at each step, the
  neighbouring pair whose concatenation is the best-scored token. A token made by the
  ``r``-th merge gets the score ``-r``: the order of the scores is the order of the merges,
  which is the order of the original pieces' scores (llama.cpp compares nothing else).
  Tokens no merge makes (characters, bytes) get 0, added tokens -1000 and padding rows
  -10000, as the converter writes them.
- **types**: ``<0xNN>`` byte tokens ``BYTE`` (llama.cpp's byte fallback needs them), the
  unknown token ``UNKNOWN``, special tokens ``CONTROL``, other added tokens ``USER_DEFINED``,
  padding rows ``UNUSED``;
- **add_space_prefix**: whether text gets a leading ``▁`` (``Metaspace`` with a prepend
  scheme, or a ``Prepend("▁")`` normaliser in older ``tokenizer.json`` files).

Only transformers objects here: no ``sentencepiece`` package is needed to write the file.
"""

from __future__ import annotations

import re
import typing as t

SPACE = "\u2581"
#: ggml token types (``gguf.TokenType``), by name, so this module imports without ``gguf``.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def is_sentencepiece(spec: t.Optional[t.Dict[str, t.Any]]) -> bool:
    """Whether a ``tokenizer.json`` dict is a BPE with byte fallback (SentencePiece's form)."""
    model = (spec or {}).get("model") or {}
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def space_prefix(spec: t.Dict[str, t.Any]) -> t.Optional[bool]:
    """Whether a SentencePiece-style ``tokenizer.json`` dict prepends ``▁`` to text; None when
    ``spec`` is not one llama.cpp's ``llama`` vocabulary tokenizes the same way.

    :param spec: The tokenizer's ``tokenizer.json`` as a dict.
    """
    if not is_sentencepiece(spec):
        return None
    pre, norm = spec.get("pre_tokenizer"), spec.get("normalizer")
    pre_steps = (pre or {}).get("pretokenizers", [pre]) if pre else []
    if norm is None and len(pre_steps) == 1 and pre_steps[0].get("type") == "Metaspace":
        meta = pre_steps[0]
        if meta.get("replacement") != SPACE or meta.get("split", True):
            return None  # split on spaces: llama.cpp merges across them
        return meta.get("prepend_scheme", "always") != "never"
    if not pre_steps and norm is not None:
        steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
        kinds = [s.get("type") for s in steps]
        replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
        if steps[-1] == replace and kinds[:-1] in ([], ["Prepend"]):
            return kinds[0] == "Prepend" and steps[0].get("prepend") == SPACE
    return None


def describe(spec: t.Dict[str, t.Any]) -> str:
    """The parts of a byte-fallback tokenizer that decide how it splits text (for messages)."""
    return f"normalizer {_kinds(spec.get('normalizer'))}, pre-tokenizer {_kinds(spec.get('pre_tokenizer'))}"


def _kinds(step: t.Optional[t.Dict[str, t.Any]]) -> str:
    if not step:
        return "none"
    inner = step.get("normalizers") or step.get("pretokenizers")
    return "+".join(s.get("type", "?") for s in inner) if inner else step.get("type", "?")


def merge_scores(merges: t.Sequence[t.Any]) -> t.Dict[str, float]:
    """``token -> -rank`` of the first merge that makes it (``merges`` as pairs or ``"a b"``)."""
    scores: t.Dict[str, float] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        scores.setdefault(left + right, -float(rank))
    return scores


def vocabulary(tokenizer, spec: t.Dict[str, t.Any], vocab_size: int):
    """``(tokens, scores, types)`` of the ``vocab_size`` embedding rows, as the converter writes them.

    :param tokenizer: The fast tokenizer.
    :param spec: Its ``tokenizer.json`` as a dict.
    :param vocab_size: Rows of the embedding; rows no token uses become ``[PAD<id>]``.
    """
    by_id = {i: tok for tok, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    scores = merge_scores(spec["model"].get("merges") or [])
    unk = tokenizer.unk_token_id
    tokens, values, types = [], [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            values.append(-10000.0)
            types.append(UNUSED)
            continue
        token = added[i].content if i in added else by_id[i]
        tokens.append(token)
        values.append(-1000.0 if i in added and i != unk else scores.get(token, 0.0))
        if i == unk:
            types.append(UNKNOWN)
        elif i in added:
            types.append(CONTROL if added[i].special else USER_DEFINED)
        elif _BYTE_TOKEN.fullmatch(token):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    return tokens, values, types

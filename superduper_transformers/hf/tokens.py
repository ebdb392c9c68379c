"""Tokenized examples of a whole batch built on flat arrays, with no Python loop per row.

A batch of examples is kept as Arrow keeps a list column: one flat array of token ids
and the offsets where each row starts (``ids[offsets[i]:offsets[i + 1]]`` is row ``i``).
:func:`assemble` joins the prompts and completions of a batch this way, with the same
truncation rules as ``data._combine`` (the one-example reference), by computing for
each row which slice of its prompt and of its completion survives, then gathering those
slices with index arrays. Nothing here knows about tokenizers or rows.
"""

from __future__ import annotations

import itertools
import typing as t

import numpy as np

IGNORE_INDEX = -100
#: Truncation codes, as stored in the ``_truncation`` column (``data._STATUS_CODES``).
FITS, PROMPT_CUT, END_LOST = 0, 1, 2


def flatten(lists: t.Sequence[t.Sequence[int]]) -> t.Tuple[np.ndarray, np.ndarray]:
    """Lists of token ids -> ``(offsets, ids)`` (int64 offsets of ``len(lists) + 1``, int32 ids)."""
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
    return offsets, ids


def gather(rows: t.Tuple[np.ndarray, np.ndarray], at: t.Sequence[int]) -> t.Tuple[np.ndarray, np.ndarray]:
    """``(offsets, ids)`` of the rows ``at`` (indices, repeats allowed) of ``rows``."""
    offsets, ids = rows
    at = np.asarray(at, dtype=np.int64)
    lengths = np.diff(offsets)[at]
    out = np.zeros(len(at) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out, ids[_ranges(offsets[at], lengths)]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, vectorised."""
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    out_starts = np.cumsum(lengths) - lengths
    return np.repeat(starts - out_starts, lengths) + np.arange(total)


def append_token(offsets: np.ndarray, ids: np.ndarray, token: t.Optional[int]):
    """Each row with ``token`` appended (unchanged when ``token`` is None)."""
    if token is None:
        return offsets, ids
    ids = np.insert(ids, offsets[1:], np.int32(token))
    return offsets + np.arange(len(offsets)), ids


def assemble(
    prompt: t.Tuple[np.ndarray, np.ndarray],
    completion: t.Tuple[np.ndarray, np.ndarray],
    max_length: t.Optional[int],
    learn_prompt: bool,
):
    """Rows ``prompt + completion``, truncated to ``max_length``, and their labels.

    :param prompt: ``(offsets, ids)`` of the prompts (empty rows for whole text).
    :param completion: ``(offsets, ids)`` of what is learned (completion + EOS, or the
        whole text + EOS).
    :param max_length: At most this many tokens per row (None: no limit). A row whose
        completion fits loses the start of its prompt (``PROMPT_CUT``); one whose
        completion alone is too long loses its end (``END_LOST``) and keeps at most the
        last ``max_length // 2`` tokens of its prompt, so that at least half of the row
        is completion, whatever the prompt's length.
    :param learn_prompt: Label the prompt tokens too (else -100).
    :return: ``(offsets, input_ids, labels, status)``; ``status`` is int8 per row.
    """
    (p_off, p_ids), (c_off, c_ids) = prompt, completion
    pl, cl = np.diff(p_off), np.diff(c_off)
    p_start, p_end, c_end = np.zeros_like(pl), pl.copy(), cl.copy()
    status = np.full(len(pl), FITS, dtype=np.int8)
    if max_length is not None:
        long = pl + cl > max_length
        cut = long & (cl < max_length)
        lost = long & ~cut
        status[cut], status[lost] = PROMPT_CUT, END_LOST
        p_start[cut] = (pl + cl - max_length)[cut]
        p_start[lost] = np.maximum(pl - max_length // 2, 0)[lost]
        c_end[lost] = (max_length - (p_end - p_start))[lost]
    kept_p, kept_c = p_end - p_start, c_end
    lengths = kept_p + kept_c
    offsets = np.zeros(len(pl) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    input_ids = np.empty(int(offsets[-1]), dtype=np.int32)
    labels = np.empty_like(input_ids)
    at_p = _ranges(offsets[:-1], kept_p)
    at_c = _ranges(offsets[:-1] + kept_p, kept_c)
    input_ids[at_p] = p_ids[_ranges(p_off[:-1] + p_start, kept_p)]
    labels[at_p] = input_ids[at_p] if learn_prompt else IGNORE_INDEX
    input_ids[at_c] = labels[at_c] = c_ids[_ranges(c_off[:-1], kept_c)]
    return offsets, input_ids, labels, status


def conversation_window(labels: t.Sequence[int], max_length: t.Optional[int]) -> t.Tuple[int, int, int]:
    """Which tokens of a conversation longer than ``max_length`` are kept: ``(start, end,
    status)``, the slice ``[start:end]`` and ``FITS``, ``PROMPT_CUT`` or ``END_LOST``.

    A conversation keeps its start unless its first reply (the first labelled token)
    starts past ``max_length // 2``: then what comes before that reply is cut from the
    left, down to ``max_length // 2`` tokens, so that the kept window learns something
    (otherwise a reply past the limit would leave no label at all), as :func:`assemble`
    keeps at most that much of a prompt before a completion that is too long.

    :param labels: The conversation's labels (``IGNORE_INDEX`` outside the replies).
    :param max_length: At most this many tokens (None: no limit).
    """
    n = len(labels)
    if max_length is None or n <= max_length:
        return 0, n, FITS
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), n)
    start = max(0, min(first - max_length // 2, n - max_length))
    end = start + max_length
    return start, end, END_LOST if end < n else PROMPT_CUT


def conversations(
    whole: t.Tuple[np.ndarray, np.ndarray],
    replies: t.Tuple[np.ndarray, np.ndarray, np.ndarray],
    ends_with_reply: np.ndarray,
    eos: t.Optional[int],
    max_length: t.Optional[int],
):
    """Conversations labelled on their replies, with EOS where needed, cut to ``max_length``:
    what ``data._encode_conversation`` does one conversation at a time.

    :param whole: ``(offsets, ids)`` of each conversation's tokens.
    :param replies: ``(row, start, end)`` of each reply, rows in order: the tokens
        ``[start:end]`` of its conversation are learned (clipped to the conversation).
    :param ends_with_reply: Per conversation, whether its last message is a reply: then
        EOS is appended unless its last reply's span already holds it.
    :param eos: The EOS token id (None: nothing appended).
    :param max_length: At most this many tokens per conversation (:func:`conversation_window`).
    :return: ``(offsets, input_ids, labels, status)``, as :func:`assemble`.
    """
    off, ids = whole
    n = np.diff(off)
    rows, starts, ends = replies
    starts, ends = np.minimum(starts, n[rows]), np.minimum(ends, n[rows])
    spans = starts < ends
    # +1 where a span starts, -1 where it ends: positions with a positive sum are learned.
    marks = np.zeros(len(ids) + 1, dtype=np.int64)
    np.add.at(marks, off[rows[spans]] + starts[spans], 1)
    np.add.at(marks, off[rows[spans]] + ends[spans], -1)
    labels = np.where(np.cumsum(marks[:-1]) > 0, ids, IGNORE_INDEX).astype(np.int32)
    if eos is not None and len(rows):
        last = np.flatnonzero(np.append(rows[1:] != rows[:-1], True))  # each conversation's last reply
        seen = np.concatenate(([0], np.cumsum(ids == eos)))
        at = off[rows[last]]
        has_eos = seen[at + ends[last]] - seen[at + starts[last]] > 0
        add = np.zeros(len(n), dtype=bool)
        add[rows[last][~has_eos]] = True
        add &= ends_with_reply
        ids = np.insert(ids, off[1:][add], np.int32(eos))
        labels = np.insert(labels, off[1:][add], np.int32(eos))
        off = off + np.concatenate(([0], np.cumsum(add)))
        n = np.diff(off)
    status = np.full(len(n), FITS, dtype=np.int8)
    if max_length is None or not (n > max_length).any():
        return off, ids, labels, status
    # The first learned token of each conversation (its length when none).
    position = np.arange(len(ids)) - np.repeat(off[:-1], n)
    first = n.copy()
    filled = n > 0
    learned_at = np.where(labels != IGNORE_INDEX, position, np.iinfo(np.int64).max)
    first[filled] = np.minimum(np.minimum.reduceat(learned_at, off[:-1][filled]), n[filled])
    long = n > max_length
    start = np.where(long, np.maximum(0, np.minimum(first - max_length // 2, n - max_length)), 0)
    end = np.where(long, start + max_length, n)
    status[long] = np.where(end < n, END_LOST, PROMPT_CUT)[long]
    kept = end - start
    new_off = np.zeros(len(n) + 1, dtype=np.int64)
    np.cumsum(kept, out=new_off[1:])
    at = _ranges(off[:-1] + start, kept)
    return new_off, ids[at], labels[at], status

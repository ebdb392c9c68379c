"""Padding-free and packed batches, kept only where the model keeps examples apart.

trl flattens a padding-free (or packed) batch into one sequence with no attention mask
and ``position_ids`` that restart at 0 for each example; it keeps our pre-tokenized
``labels`` (prompt at -100; packing packs them with the ``input_ids``) and masks the
first token of each example, so no label is predicted across a boundary.

What keeps the examples apart *in attention* is the model: transformers 5 builds the
causal mask from ``position_ids`` when no attention mask is given (``masking_utils.
find_packed_sequence_indices``), for sdpa and eager alike, and flash-attention reads the
boundaries trl passes. A model whose attention ignores that (a custom attention
function, a model that drops ``position_ids``) would let a packed example see the ones
before it. So before training :func:`keep_examples_apart` asks the loaded model: the
logits of an example alone must equal its logits after another example in one flat
sequence. Where they do not, a default layout falls back to padding (logged with the
reason); a layout the user chose is kept, with a warning.

Flattening is also only worth it where there is padding to remove. Without a
variable-length attention kernel (flash-attention), a flat batch of B examples of length
L is attended as one sequence of B*L tokens under a block mask: B times the attention
work of B padded rows. So the default layout stays padded when the rows are of nearly
one length (:func:`padding_share` under :data:`MIN_PADDING_SHARE`), where flattening
saves nothing.
"""

from __future__ import annotations

import copy
import typing as t

from superduper import logging

#: Lengths of the two probe examples (the second one is compared).
_PROBE_LENGTHS = (5, 7)

#: Below this share of pad tokens in padded batches, a default layout stays padded
#: unless the attention kernel is variable-length (see the module's docstring).
MIN_PADDING_SHARE = 0.1


def padding_share(dataset, batch_size: int, batches: int = 256, seed: int = 0) -> t.Optional[float]:
    """The expected share of pad tokens in padded batches of ``batch_size`` random rows.

    Read from the lengths of the tokenized rows (one Arrow column, not the rows), over
    ``batches`` random batches. None for a dataset without random access (a stream).

    :param dataset: A tokenized ``datasets.Dataset`` (``input_ids``).
    :param batch_size: Rows per device batch.
    :param batches: Random batches to average over.
    :param seed: The sampling seed.
    """
    import numpy as np
    import pyarrow.compute as pc

    try:
        column = dataset.data.column("input_ids")
    except Exception:
        return None
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) == 0 or batch_size < 1:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(lengths), size=(batches, min(batch_size, len(lengths))))
    sampled = lengths[picks]
    padded = float(sampled.max(axis=1).sum() * sampled.shape[1])
    return 1.0 - float(sampled.sum()) / padded if padded else None


def _variable_length_attention(model) -> bool:
    """Whether the model's attention kernel attends flattened examples one by one."""
    attention = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
    return "flash" in attention


def _tolerance(dtype) -> float:
    """Relative tolerance of the probe: kernels differ on a flat vs a single sequence."""
    import torch

    return 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2


def examples_kept_apart(model) -> t.Tuple[bool, str]:
    """Whether ``model`` keeps examples of a flattened batch apart in attention.

    Runs the model twice on random token ids: example B alone, and example A then B in
    one sequence with ``position_ids`` restarting at B (no attention mask and no cache,
    as trl trains). B's logits must match.

    :param model: The model about to be trained (peft-wrapped or not).
    :return: (kept apart, why) -- the reason is logged either way.
    """
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    embeddings = model.get_input_embeddings()
    device, dtype = embeddings.weight.device, embeddings.weight.dtype
    vocab = int(embeddings.weight.shape[0])
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, vocab, (n,), generator=generator).tolist() for n in _PROBE_LENGTHS)
    # trl's own collator builds the flat batch: the same keys training gives the model
    # (position_ids, and the boundaries flash-attention reads).
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)

    def logits(examples):
        batch = collate([{"input_ids": ids} for ids in examples])
        batch.pop("labels")
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        # Activations that require grad, as in training: on a CPU with AVX-512-BF16,
        # bitsandbytes repacks 4-bit weights for inference at the first forward without
        # them, and training on the repacked weights learns far less.
        embeds = embeddings(batch.pop("input_ids")).detach().requires_grad_(True)
        # No cache, as trl trains: with one, transformers skips the packed-sequence mask.
        out = model(inputs_embeds=embeds, **batch, use_cache=False)
        return out.logits[:, -len(b) :].detach().float()

    was_training = model.training
    model.eval()  # no dropout: the two passes must be comparable
    try:
        alone, packed = logits([b]), logits([a, b])
    except (TypeError, ValueError, RuntimeError) as e:
        return False, f"the model cannot run a flattened batch ({type(e).__name__}: {e})"
    finally:
        model.train(was_training)
    difference = float((alone - packed).abs().max())
    scale = float(alone.abs().max())
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if difference <= _tolerance(dtype) * (1.0 + scale):
        return (
            True,
            f"attention `{attention}` keeps flattened examples apart (probe difference {difference:.2g})",
        )
    return False, (
        f"with attention `{attention}`, an example's logits change when another example "
        f"precedes it in a flattened batch (difference {difference:.3g}, logits up to "
        f"{scale:.3g}): packed examples would see each other"
    )


def keep_examples_apart(model, training_args, explicit: bool, train_dataset=None):
    """The training arguments to use with ``model``: padding-free/packed where correct.

    :param model: The loaded model (after LoRA / quantization).
    :param training_args: The ``SFTConfig`` built for the training (not changed).
    :param explicit: The user chose ``packing``/``padding_free`` (kept even when the
        probe fails); otherwise a failed probe falls back to padded batches.
    :param train_dataset: The tokenized training rows: a default padding-free layout
        stays padded when they are of nearly one length (:func:`padding_share`).
    :return: ``training_args``, or a copy with padding-free and packing turned off.
    """
    packing = bool(getattr(training_args, "packing", False))
    padding_free = bool(getattr(training_args, "padding_free", False))
    if not (packing or padding_free):
        return training_args
    layout = "packed" if packing else "padding-free"
    if not explicit and not packing and train_dataset is not None and not _variable_length_attention(model):
        share = padding_share(train_dataset, int(getattr(training_args, "per_device_train_batch_size", 8)))
        if share is not None and share < MIN_PADDING_SHARE:
            logging.info(
                f"Batches: padded, not padding-free: the rows are of nearly one length (padded "
                f"batches would be {share:.0%} padding), and without a variable-length attention "
                "kernel a flattened batch costs more attention than it saves."
            )
            return _padded(training_args)
    ok, why = examples_kept_apart(model)
    if ok:
        logging.info(f"Batches: {layout} ({why}).")
        return training_args
    if explicit:
        logging.warn(
            f"Batches: {layout}, as set, although {why}. Set `packing=False, padding_free=False` "
            "to train on padded batches."
        )
        return training_args
    logging.warn(f"Batches: padded, not {layout}, because {why}.")
    return _padded(training_args)


def _padded(training_args):
    # A shallow copy: building a new SFTConfig would reset accelerate's global state.
    args = copy.copy(training_args)
    args.padding_free, args.packing, args.eval_packing = False, False, False
    return args

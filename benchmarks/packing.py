"""Useful tokens/s with padded, padding-free and packed batches, on long-tailed rows.

The three arms train the same randomly initialised Llama with the same LoRA settings, rows
and number of steps, in this process, one after the other, each through the plugin's own
path (``build_sft_config`` from an ``LLMTrainer``, then ``hf.train.run_job``):

- padded: ``padding_free=False`` (each batch padded to its longest row; the old default);
- padding-free: the default (each batch of rows flattened into one sequence);
- packed: ``packing=True`` (rows packed into ``max_seq_length`` bins, then flattened).

Row lengths follow a lognormal distribution (most rows short, a few long), as chat and
instruction data do. *Useful* tokens are the tokens of the rows, never padding; each arm
counts those it trains on. Reported: useful tokens/s of each arm and their ratios to the
padded arm, and the loss: padded and padding-free see the same rows at every step, so
their losses must agree step by step. A packed step holds whole sequences of
``max_seq_length`` tokens, so the packed arm takes ``batch x mean row length / max_seq_length``
sequences per step (about as many tokens per step as the others); its loss is compared at
the same count of tokens trained on.

Run: ``python benchmarks/packing.py [--size tiny|small|1b] [--steps N] [--sigma S]``
(``--sigma``: the lognormal spread of the lengths; larger is a longer tail, more padding).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.overhead import SIZES, build_model  # noqa: E402

ARMS = {"padded": {"padding_free": False}, "padding_free": {}, "packed": {"packing": True}}


def lognormal_rows(n: int, max_len: int, median: int = 24, sigma: float = 1.0):
    """``n`` rows whose prompt and completion lengths (in byte tokens) are lognormal."""
    import math
    import random

    rng = random.Random(0)

    def length():
        return max(2, min(int(rng.lognormvariate(math.log(median), sigma)), max_len // 2 - 2))

    # A learnable completion (the prompt's digits mapped to letters), so the loss falls.
    out = []
    for _ in range(n):
        x = "".join(rng.choice("0123456789") for _ in range(length()))
        y = "".join("abcdefghij"[int(c)] for c in (x * (max_len // len(x) + 1))[: length()])
        out.append({"x": x + "=", "y": y})
    return out


class _Counted:
    """Wraps a collator: counts the useful (non-padding) tokens of every training batch."""

    def __init__(self, collate):
        self.collate, self.per_step, self.computed = collate, [], []

    def __call__(self, examples):
        batch = self.collate(examples)
        mask = batch.get("attention_mask")
        useful = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        self.per_step.append(useful)
        self.computed.append(int(batch["input_ids"].numel()))  # with the padding
        return batch


def run_arm(model_dir, rows, settings, layout, seq, out):
    """Train one arm; return its seconds in ``train()``, useful tokens per step and losses."""
    from transformers import TrainerCallback

    from superduper_transformers import LLMTrainer
    from superduper_transformers.hf import data
    from superduper_transformers.hf.job import TrainJob
    from superduper_transformers.hf.loading import load_tokenizer
    from superduper_transformers.hf.train import run_job
    from superduper_transformers.settings import TrainSettings
    from superduper_transformers.trainer_args import build_sft_config

    trainer = LLMTrainer(
        "bench", key=("x", "y"), select=None, max_seq_length=seq, output_dir=out, **settings, **layout
    )
    tokenizer = load_tokenizer({"pretrained_model_name_or_path": model_dir})
    dataset = data.build_dataset(tokenizer, rows, "x", "y", seq)
    args = build_sft_config(trainer, out, has_eval=False)
    counted, losses = {}, []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.start

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    def prepare(sft):
        counted["c"] = sft.data_collator = _Counted(sft.data_collator)
        return sft

    timer = Timer()
    run_job(
        TrainJob(
            training_args=args,
            train_dataset=dataset,
            eval_datasets=None,
            model_kwargs={"pretrained_model_name_or_path": model_dir},
            tokenizer_kwargs={"pretrained_model_name_or_path": model_dir},
            settings=TrainSettings.from_trainer(trainer, args),
            callbacks=[timer],
            trainer_prepare_func=prepare,
        )
    )
    per_step = counted["c"].per_step[: len(losses)]
    # (the data loader may collate a batch ahead of the last step)
    return timer.seconds, per_step, losses, sum(counted["c"].computed[: len(losses)])


def loss_at_tokens(per_step, losses, tokens, window=5):
    """Mean loss of the ``window`` steps around the step where ``tokens`` were reached."""
    seen = 0
    for i, n in enumerate(per_step):
        seen += n
        if seen >= tokens:
            lo = max(0, i - window // 2)
            return sum(losses[lo : lo + window]) / len(losses[lo : lo + window])
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--median", type=int, default=24, help="median prompt (and completion) tokens")
    parser.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma of the lengths (tail)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch

    gpu = torch.cuda.is_available()
    _, _, _, _, seq, batch = SIZES[args.size]
    settings = dict(
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        per_device_train_batch_size=batch,
        max_steps=args.steps,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        use_cpu=not gpu,
        bf16=gpu,
        disable_tqdm=True,
        dataloader_num_workers=0,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
    )
    rows = lognormal_rows(args.rows, seq, median=args.median, sigma=args.sigma)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        build_model(model_dir, args.size)
        # warm-up (CUDA context, kernels, first-call costs) that no arm pays
        run_arm(model_dir, rows, {**settings, "max_steps": 2}, ARMS["padded"], seq, os.path.join(tmp, "w"))
        # A packed step holds `batch` full sequences of `seq` tokens; to train on about
        # as many tokens per step (so the same steps compare), the packed arm takes
        # fewer sequences: batch x mean row length / seq.
        mean_len = sum(len(x["x"]) + len(x["y"]) + 1 for x in rows) / len(rows)
        packed_batch = max(1, round(batch * mean_len / seq))
        for name, layout in ARMS.items():
            arm = {**settings, "per_device_train_batch_size": packed_batch} if name == "packed" else settings
            seconds, per_step, losses, computed = run_arm(
                model_dir, rows, arm, layout, seq, os.path.join(tmp, name)
            )
            results[name] = dict(seconds=seconds, per_step=per_step, losses=losses, computed=computed)
    padded = results["padded"]
    tokens = sum(padded["per_step"])
    # The loss of every arm after as many tokens as the arm that trained on fewest saw.
    common = min(sum(r["per_step"]) for r in results.values())
    summary = {
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "size": args.size,
        "steps": args.steps,
        "batch": batch,
        "packed_batch": packed_batch,
        "max_seq_length": seq,
        "common_tokens": common,
        "lengths": {"median": args.median, "sigma": args.sigma},
        # Removing every pad token can speed a step up by at most 1 / (1 - padding share).
        "ceiling_over_padded": round(padded["computed"] / tokens, 2),
    }
    for name, r in results.items():
        useful = sum(r["per_step"])
        summary[name] = {
            "train_s": round(r["seconds"], 2),
            "useful_tokens": useful,
            "padding_share": round(1 - useful / r["computed"], 3),
            "useful_tokens_per_s": round(useful / r["seconds"], 1),
            "over_padded_tokens_per_s": round((useful / r["seconds"]) / (tokens / padded["seconds"]), 2),
            "final_loss": round(sum(r["losses"][-5:]) / len(r["losses"][-5:]), 4),
            "loss_at_common_tokens": round(loss_at_tokens(r["per_step"], r["losses"], common), 4),
            "loss_at_half_common_tokens": round(loss_at_tokens(r["per_step"], r["losses"], common / 2), 4),
        }
    # Same rows at every step: the largest per-step loss difference is float noise.
    pairs = zip(results["padded"]["losses"], results["padding_free"]["losses"])
    summary["padding_free_max_step_loss_diff"] = round(max(abs(a - b) for a, b in pairs), 5)
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()

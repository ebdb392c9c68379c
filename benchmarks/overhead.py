"""What does training through the datalayer cost, against plain transformers + peft?

Both arms train the same randomly initialised Llama with the same LoRA settings,
data, steps and save schedule, in this process, one after the other:

- baseline: ``trl.SFTTrainer`` + peft, checkpoints written to a local folder only;
- plugin: ``db.apply(llm)`` with an ``LLMTrainer``: the same trainer plus the
  ``LLMCallback`` copying each checkpoint into the artifact store (with its sha256
  manifest) and registering it, pruning, and recording eval metrics.

Reported: tokens/s of each arm, their ratio, and the time spent in the callback per
checkpoint. Run: ``python benchmarks/overhead.py [--size tiny|small|1b] [--steps N]``.
Results are ratios measured in the same run; absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIZES = {
    # name: (hidden, intermediate, layers, heads, seq_len, batch)
    "tiny": (64, 128, 2, 4, 64, 8),
    "small": (512, 1376, 8, 8, 256, 8),
    "1b": (2048, 5632, 22, 32, 1024, 8),  # the shape of TinyLlama-1.1B
}


def build_model(folder: str, size: str) -> None:
    """A random Llama of the given shape + the tiny byte-level tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from plugin_tests.fixtures import build_tiny_model

    build_tiny_model(folder)  # tokenizer (and a tiny model we overwrite)
    hidden, inter, layers, heads, seq, _ = SIZES[size]
    torch.manual_seed(0)
    cfg = LlamaConfig.from_pretrained(folder)
    cfg.update(
        dict(
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=max(seq, 64),
        )
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)


def rows(n: int, seq: int):
    """``n`` rows whose prompt+completion fill about ``seq`` byte tokens."""
    import random

    rng = random.Random(0)
    return [
        {
            "x": "".join(rng.choice("0123456789+=") for _ in range(seq // 2 - 1)),
            "y": "".join(rng.choice("abcdefgh") for _ in range(seq // 2 - 2)),
        }
        for _ in range(n)
    ]


def common_settings(steps: int, save_steps: int, batch: int, gpu: bool):
    return dict(
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        per_device_train_batch_size=batch,
        max_steps=steps,
        save_steps=save_steps,
        logging_steps=save_steps,
        seed=0,
        use_cpu=not gpu,
        bf16=gpu,
        disable_tqdm=True,
        report_to="none",
        save_total_limit=2,
        dataloader_num_workers=0,
        # trl's SFTConfig turns gradient checkpointing on by default; the plugin turns it
        # off unless asked. Same setting in both arms, or the baseline recomputes.
        gradient_checkpointing=False,
    )


def run_baseline(model_dir, data, settings, lora, seq, out):
    """Plain trl + peft on the same tokenized data (our tokenize, so the data is identical).

    :return: seconds inside ``trainer.train`` and the mean tokens per row.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from superduper_transformers.hf.data import build_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    ds = build_dataset(tok, data, "x", "y", seq)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    args = SFTConfig(output_dir=out, max_length=seq, eval_strategy="no", **settings)

    class Timer(TrainerCallback):
        """Time from on_train_begin to on_train_end, as the plugin arm is timed."""

        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.start

    timer = Timer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer])
    trainer.train()
    mean_len = sum(len(r) for r in ds["input_ids"]) / len(ds)
    return timer.seconds, mean_len


def run_plugin(model_dir, data, settings, lora, seq, out, store):
    """The same training through db.apply(llm), timing the callback's database work."""
    from superduper import CFG

    CFG.artifact_store = f"filesystem://{store}"
    from superduper import Table, superduper
    from superduper.base import apply as sd_apply

    from superduper_transformers import LLM, LLMTrainer
    from superduper_transformers.launch.callback import LLMCallback

    sd_apply.console.quiet = True
    spent = {"on_save": 0.0, "saves": 0}
    original = LLMCallback.on_save, LLMCallback.on_train_begin, LLMCallback.on_train_end

    def timed_on_save(self, *a, **k):
        t = time.perf_counter()
        original[0](self, *a, **k)
        spent["on_save"] += time.perf_counter() - t
        spent["saves"] += 1

    def begin(self, *a, **k):
        spent["begin"] = time.perf_counter()
        return original[1](self, *a, **k)

    def end(self, *a, **k):
        # the training loop as the baseline measures it, including every on_save
        spent["train_s"] = time.perf_counter() - spent["begin"]
        return original[2](self, *a, **k)

    LLMCallback.on_save, LLMCallback.on_train_begin, LLMCallback.on_train_end = timed_on_save, begin, end
    db = superduper(f"mongomock://bench-{os.getpid()}", force_apply=True)
    db.apply(Table("rows", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    db["rows"].insert([{**r, "_fold": "train"} for r in data])
    trainer = LLMTrainer(
        "bench-trainer",
        key=("x", "y"),
        select=db["rows"].select(),
        max_seq_length=seq,
        lora_r=lora["r"],
        lora_alpha=lora["lora_alpha"],
        lora_dropout=lora["lora_dropout"],
        output_dir=out,
        **settings,
    )
    llm = LLM("bench", model_name_or_path=model_dir, trainer=trainer)
    t = time.perf_counter()
    db.apply(llm, force=True)
    wall = time.perf_counter() - t
    LLMCallback.on_save, LLMCallback.on_train_begin, LLMCallback.on_train_end = original
    return wall, spent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--save-steps", type=int, default=20)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch

    gpu = torch.cuda.is_available()
    _, _, _, _, seq, batch = SIZES[args.size]
    lora = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    settings = common_settings(args.steps, args.save_steps, batch, gpu)
    data = rows(batch * 16, seq)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        build_model(model_dir, args.size)
        # warm-up (CUDA context, kernels) so neither arm pays it
        run_baseline(
            model_dir,
            data,
            {**settings, "max_steps": 3, "save_steps": 1000},
            lora,
            seq,
            os.path.join(tmp, "w"),
        )
        # baseline before and after the plugin arm: the faster of the two, so that
        # neither arm gains from running later on warmer caches
        base_1, mean_len = run_baseline(model_dir, data, settings, lora, seq, os.path.join(tmp, "base1"))
        wall_s, spent = run_plugin(
            model_dir, data, settings, lora, seq, os.path.join(tmp, "plug"), os.path.join(tmp, "store")
        )
        base_2, _ = run_baseline(model_dir, data, settings, lora, seq, os.path.join(tmp, "base2"))
        base_s = min(base_1, base_2)
    tokens = args.steps * batch * mean_len
    plug_s = spent["train_s"]
    result = {
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "size": args.size,
        "steps": args.steps,
        "save_steps": args.save_steps,
        "tokens": int(tokens),
        "baseline_train_s": round(base_s, 2),
        "baseline_runs_s": [round(base_1, 2), round(base_2, 2)],
        "plugin_train_s": round(plug_s, 2),
        "plugin_apply_wall_s": round(wall_s, 2),
        "baseline_tokens_per_s": round(tokens / base_s, 1),
        "plugin_tokens_per_s": round(tokens / plug_s, 1),
        "plugin_over_baseline_time": round(plug_s / base_s, 3),
        "checkpoints_registered": spent["saves"],
        "callback_s_per_checkpoint": round(spent["on_save"] / max(spent["saves"], 1), 3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

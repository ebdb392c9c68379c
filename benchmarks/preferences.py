"""What do preference objectives cost through the plugin?

``step``: DPO + LoRA through ``db.apply(llm)`` against raw trl ``DPOTrainer`` + peft on the
same rows, model, LoRA and settings, in this process; the training loop of each arm timed
from ``on_train_begin`` to ``on_train_end`` (the plugin's by a callback given by import path,
as a user gives one). The raw arm runs before and after the plugin arm; the faster counts.

``memory``: peak memory of DPO + LoRA against SFT + LoRA (on the chosen answers) through the
plugin, on the same model and rows, each arm in a fresh process: the growth of the peak
resident set over the process's size just before ``db.apply`` (on a GPU, the peak of
``torch.cuda.max_memory_allocated``). DPO's reference model is the base with the adapter
disabled: no second copy of the weights, so the ratio is what DPO's two sequences per row
add.

Also at equal sequences a step (a DPO batch of B pairs is 2B sequences: SFT on 2B rows),
with trl's ``precompute_ref_log_probs``, with B pairs an optimizer step in two halves
(``gradient_accumulation_steps=2``), and with full fine-tuning (``--arms``, see
:data:`MEMORY_ARMS`).

Run: ``python benchmarks/preferences.py [step|memory|all] [--size tiny|small|wide|1b] [--steps N]
[--arms dpo,sft,...]`` (``wide``: 205M parameters, few tokens per step: the weights dominate memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

#: Seconds in the training loop, by arm (written by :class:`Timer`).
TIMES: dict = {}


def _timer_class():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        """The median time between two ``on_step_end`` into ``TIMES[arm]`` (a step; the
        save at the end, after the last step's event, is not in it), and the whole loop
        (``on_train_begin`` to ``on_train_end``) into ``TIMES[arm + "_loop"]``."""

        def __init__(self, arm: str = "plugin"):
            self.arm = arm

        def on_train_begin(self, *a, **k):
            self.start, self.ends = time.perf_counter(), []

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

        def on_train_end(self, *a, **k):
            gaps = sorted(b - a for a, b in zip(self.ends, self.ends[1:]))
            TIMES[self.arm] = gaps[len(gaps) // 2]
            TIMES[self.arm + "_min"] = gaps[0]  # the least disturbed step (a busy machine)
            TIMES[self.arm + "_loop"] = time.perf_counter() - self.start

    return Timer


def __getattr__(name):
    if name == "Timer":  # by import path: "benchmarks.preferences:Timer"
        return _timer_class()
    raise AttributeError(name)


def pairs(n: int, length: int):
    """``n`` (prompt, chosen, rejected) rows of about ``length`` characters each part."""
    import random

    rng = random.Random(0)
    word = lambda alphabet: "".join(rng.choice(alphabet) for _ in range(length))  # noqa: E731
    return [
        dict(prompt=word("xyz+="), chosen=word("0123456789"), rejected=word("abcdefgh")) for _ in range(n)
    ]


def settings(steps: int, batch: int, gpu: bool):
    return dict(
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        per_device_train_batch_size=batch,
        max_steps=steps,
        save_steps=steps,
        logging_steps=steps,
        seed=0,
        use_cpu=not gpu,
        bf16=gpu,
        disable_tqdm=True,
        report_to="none",
        dataloader_num_workers=0,
        gradient_checkpointing=False,
    )


def sizes():
    """``benchmarks/overhead.py``'s model shapes, and ``wide``: large weights, few tokens
    (batch 2 x 64), where the weights dominate memory and a second copy would show."""
    from benchmarks.overhead import SIZES

    return {**SIZES, "wide": (2048, 5632, 4, 16, 64, 2)}


LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")


def run_raw_dpo(model_dir, rows, config, max_length, out):
    """trl's DPOTrainer + peft, no datalayer."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(task_type="CAUSAL_LM", **LORA)
    )
    args = DPOConfig(output_dir=out, max_length=max_length, **config)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        callbacks=[_timer_class()("raw")],
    )
    trainer.train()
    return TIMES["raw"], TIMES["raw_loop"], TIMES["raw_min"]


def run_plugin(model_dir, rows, config, max_length, out, store, objective="dpo", timer=True, identifier=None):
    """The same training through ``db.apply(llm)``; returns the seconds in the loop."""
    from superduper import CFG

    CFG.artifact_store = f"filesystem://{store}"
    from superduper import Table, superduper
    from superduper.base import apply as sd_apply

    from superduper_transformers import LLM, LLMTrainer

    sd_apply.console.quiet = True
    identifier = identifier or f"bench-{objective}"
    db = superduper(f"mongomock://{identifier}-{os.getpid()}", force_apply=True)
    db.apply(
        Table("rows", fields={"prompt": "str", "chosen": "str", "rejected": "str", "_fold": "str"}),
        force=True,
    )
    db["rows"].insert([{**r, "_fold": "train"} for r in rows])
    key = ("prompt", "chosen", "rejected") if objective == "dpo" else ("prompt", "chosen")
    trainer = LLMTrainer(
        f"{identifier}-trainer",
        objective=objective,
        key=key,
        select=db["rows"].select(),
        max_seq_length=max_length,
        lora_r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"],
        output_dir=out,
        callbacks=["benchmarks.preferences:Timer"] if timer else None,
        **config,
    )
    db.apply(LLM(identifier, model_name_or_path=model_dir, trainer=trainer), force=True)
    import benchmarks.preferences as me  # the module the callback was imported from

    return me.TIMES.get("plugin"), me.TIMES.get("plugin_loop"), me.TIMES.get("plugin_min")


def step(args, gpu, model_dir, tmp):
    *_, seq, batch = sizes()[args.size]
    rows = pairs(batch * 8, seq // 6)
    config = settings(args.steps, batch, gpu)
    run_raw_dpo(model_dir, rows, {**config, "max_steps": 2, "save_steps": 1000}, seq, os.path.join(tmp, "w"))
    # raw, plugin, raw, plugin: each arm's best of two, so that neither gains from running
    # later on warmer caches or in a quieter moment of a shared machine.
    raw, plugin = [], []
    for i in range(2):
        raw.append(run_raw_dpo(model_dir, rows, config, seq, os.path.join(tmp, f"raw{i}")))
        plugin.append(
            run_plugin(
                model_dir,
                rows,
                config,
                seq,
                os.path.join(tmp, f"plug{i}"),
                os.path.join(tmp, f"store{i}"),
                identifier=f"bench-dpo-{i}",
            )
        )
    best = lambda runs, k: min(r[k] for r in runs)  # noqa: E731
    return {
        "raw_dpo_step_s (median step, best run)": round(best(raw, 0), 4),
        "plugin_dpo_step_s (median step, best run)": round(best(plugin, 0), 4),
        "plugin_over_raw_step_time": round(best(plugin, 0) / best(raw, 0), 3),
        "plugin_over_raw_fastest_step": round(best(plugin, 2) / best(raw, 2), 3),
        "step_runs_s": {"raw": [round(r[0], 3) for r in raw], "plugin": [round(r[0], 3) for r in plugin]},
        "plugin_over_raw_loop_time (one save, registered in the db)": round(
            best(plugin, 1) / best(raw, 1), 3
        ),
    }


#: The memory arms: name -> (objective, batch size as a multiple of the shape's, more
#: trainer settings). A DPO batch of B pairs is 2B sequences (chosen and rejected), so
#: ``sft_2x`` (SFT on 2B rows a step) is the arm at equal sequences per step;
#: ``dpo_accum2`` takes B pairs per optimizer step in two halves.
MEMORY_ARMS = {
    "dpo": ("dpo", 1, {}),
    "sft": ("sft", 1, {}),
    "sft_2x": ("sft", 2, {}),
    "dpo_precomputed_ref": ("dpo", 1, {"precompute_ref_log_probs": True}),
    "dpo_accum2": ("dpo", 0.5, {"gradient_accumulation_steps": 2}),
    # Full fine-tuning: trl loads the reference as a second copy of the weights, unless
    # its log-probabilities are computed before training.
    "dpo_full": ("dpo", 1, {"use_lora": False}),
    "dpo_full_precomputed_ref": ("dpo", 1, {"use_lora": False, "precompute_ref_log_probs": True}),
    "sft_full_2x": ("sft", 2, {"use_lora": False}),
}
LORA_ARMS = ("dpo", "sft", "sft_2x", "dpo_precomputed_ref", "dpo_accum2")
#: Ratios reported when both arms ran: name -> (numerator, denominator).
RATIOS = {
    "dpo_over_sft_peak_memory (same rows a step)": ("dpo", "sft"),
    "dpo_over_sft_2x_peak_memory (same sequences a step)": ("dpo", "sft_2x"),
    "dpo_precomputed_ref_over_dpo": ("dpo_precomputed_ref", "dpo"),
    "dpo_accum2_over_sft (same rows an optimizer step)": ("dpo_accum2", "sft"),
    "dpo_full_over_sft_full_2x (same sequences a step)": ("dpo_full", "sft_full_2x"),
    "dpo_full_precomputed_ref_over_sft_full_2x": ("dpo_full_precomputed_ref", "sft_full_2x"),
    "dpo_full_precomputed_ref_over_dpo_full": ("dpo_full_precomputed_ref", "dpo_full"),
}


def _peak_child(model_dir, arm, args, tmp):
    """Run one plugin arm (:data:`MEMORY_ARMS`) in a fresh process; its peak memory growth in MB."""
    code = (
        "import json, sys; from benchmarks.preferences import _measure_peak; "
        f"print('PEAK', json.dumps(_measure_peak({model_dir!r}, {arm!r}, {args.size!r}, {args.steps}, {tmp!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("PEAK ")]
    if not line:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(line[0][5:])


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _measure_peak(model_dir, arm, size, steps, tmp):
    import torch

    objective, factor, extra = MEMORY_ARMS[arm]
    gpu = torch.cuda.is_available()
    *_, seq, batch = sizes()[size]
    rows = pairs(batch * 8, seq // 6)  # the same rows in every arm
    config = {**settings(steps, int(batch * factor), gpu), **extra}
    import trl  # noqa: F401

    import superduper_transformers.trainer  # noqa: F401  (everything imported before measuring)

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    before = _rss_mb("VmRSS")
    run_plugin(
        model_dir,
        rows,
        config,
        seq,
        os.path.join(tmp, arm),
        os.path.join(tmp, "store-" + arm),
        objective,
        False,
    )
    if gpu:
        return torch.cuda.max_memory_allocated() / 2**20
    return _rss_mb("VmHWM") - before


def memory(args, gpu, model_dir, tmp):
    peak = {arm: _peak_child(model_dir, arm, args, tmp) for arm in args.arms.split(",")}
    return {
        **{f"{arm}_peak_mb": round(mb, 1) for arm, mb in peak.items()},
        **{name: round(peak[a] / peak[b], 3) for name, (a, b) in RATIOS.items() if a in peak and b in peak},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="?", default="all", choices=["step", "memory", "all"])
    parser.add_argument("--size", default="small", choices=sorted(sizes()))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument(
        "--arms", default=",".join(LORA_ARMS), help=f"memory arms, comma-separated, of {sorted(MEMORY_ARMS)}"
    )
    args = parser.parse_args()

    import torch

    from benchmarks import overhead

    gpu = torch.cuda.is_available()
    result = {
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "size": args.size,
        "steps": args.steps,
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        overhead.SIZES.update(sizes())  # build_model reads the shape from there
        overhead.build_model(model_dir, args.size)
        if args.what in ("step", "all"):
            result.update(step(args, gpu, model_dir, tmp))
        if args.what in ("memory", "all"):
            result.update(memory(args, gpu, model_dir, tmp))
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

"""``db.apply(llm)`` end to end against a plain script, and the cost of each checkpoint save.

Part ``ratio``: the same training twice, in this process, on rows in an embedded SQLite
database (superduper-sql's ``sqlite:///`` file):

- plain: a script that reads the rows with ``sqlite3`` and trains with trl + peft
  (trl's prompt/completion format, its defaults), checkpoints in a local folder;
- plugin: ``superduper(uri)`` then ``db.apply(llm)``: rows selected through the datalayer,
  tokenized by the plugin, every checkpoint copied into the artifact store, verified and
  registered, old ones pruned, the model row saved.

Both train the same random Llama, LoRA settings, rows (all of one length, so padding and
padding-free batches compute the same), steps and save schedule. Reported: the total
time of each (from opening the data to the trained model saved; the plugin's includes
building the datalayer), each arm run ``--repeats`` times alternately, and the ratio of the
fastest runs; also each arm's CPU time (this process's), which other jobs on a shared
machine inflate less than the wall time.

Part ``saves``: one ``db.apply`` of the tiny model saving at every step, N saves: the time
of each ``LLMCallback.on_save`` by save index, the datalayer reads per save
(``Datalayer.load`` calls) and the SQL statements of each save (sqlite3's trace: every
statement, schema reads included), to see what a save costs and whether it grows as
checkpoints accumulate.

Run: ``python benchmarks/end_to_end.py ratio [--size tiny|small] [--steps N]`` and
``python benchmarks/end_to_end.py saves [--saves 100] [--limit 3|0]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.overhead import SIZES, build_model, common_settings, rows  # noqa: E402

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")


def open_db(tmp: str, name: str):
    from superduper import CFG, superduper
    from superduper.base import apply as sd_apply

    sd_apply.console.quiet = True
    CFG.artifact_store = f"filesystem://{os.path.join(tmp, name, 'store')}"
    os.makedirs(os.path.join(tmp, name), exist_ok=True)
    return superduper(f"sqlite:///{os.path.join(tmp, name, 'db.sqlite')}", force_apply=True)


def sqlite_connection(db):
    """The datalayer's own ``sqlite3`` connection (superduper-sql, this thread's)."""
    backend = getattr(db.databackend, "_backend", db.databackend)
    with backend.connection_manager.get_connection() as conn:
        return conn.con


def fill(db, data) -> None:
    from superduper import Table

    db.apply(Table("rows", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    db["rows"].insert([{**r, "_fold": "train"} for r in data])


def plain_script(sqlite_file: str, model_dir: str, settings, seq: int, out: str) -> float:
    """What a user writes without the plugin: sqlite3 + trl + peft. Returns its seconds."""
    start = time.perf_counter()
    import sqlite3

    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    with sqlite3.connect(sqlite_file) as connection:
        data = connection.execute("SELECT x, y FROM rows WHERE _fold = 'train'").fetchall()
    dataset = Dataset.from_list([{"prompt": x, "completion": y} for x, y in data])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(task_type="CAUSAL_LM", **LORA)
    )
    args = SFTConfig(output_dir=out, max_length=seq, eval_strategy="no", **settings)
    SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer).train()
    model.save_pretrained(os.path.join(out, "final"))
    return time.perf_counter() - start


def plugin_apply(db, model_dir: str, settings, seq: int, out: str, identifier: str = "bench"):
    """``db.apply(llm)`` with the plugin's trainer on the rows table. Returns its seconds."""
    from superduper_transformers import LLM, LLMTrainer

    trainer = LLMTrainer(
        f"{identifier}-trainer",
        key=("x", "y"),
        select=db["rows"].select(),
        max_seq_length=seq,
        lora_r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"],
        output_dir=out,
        **settings,
    )
    llm = LLM(identifier, model_name_or_path=model_dir, trainer=trainer)
    start = time.perf_counter()
    db.apply(llm, force=True)
    return time.perf_counter() - start


def ratio(args) -> dict:
    import torch

    gpu = torch.cuda.is_available()
    _, _, _, _, seq, batch = SIZES[args.size]
    settings = common_settings(args.steps, args.save_steps, batch, gpu)
    data = rows(batch * 16, seq)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        build_model(model_dir, args.size)
        db = open_db(tmp, "data")
        fill(db, data)
        sqlite_file = os.path.join(tmp, "data", "db.sqlite")
        db.disconnect()
        warm = {**settings, "max_steps": 2, "save_steps": 1000}
        plain_script(sqlite_file, model_dir, warm, seq, os.path.join(tmp, "warm"))  # first-call costs
        # Alternating arms, each `repeats` times; the fastest run of each is compared (on a
        # shared machine the slower runs measure the neighbours' load, not the arm).
        plains, plugins, plain_cpu, plugin_cpu = [], [], [], []
        for i in range(args.repeats):
            cpu = time.process_time()
            plains.append(plain_script(sqlite_file, model_dir, settings, seq, os.path.join(tmp, f"plain{i}")))
            plain_cpu.append(time.process_time() - cpu)
            # a fresh copy of the rows' database each time: building a datalayer loads
            # every component in it, and the earlier runs' would weigh on the later ones
            os.makedirs(os.path.join(tmp, f"run{i}"))
            shutil.copy(sqlite_file, os.path.join(tmp, f"run{i}", "db.sqlite"))
            start, cpu = time.perf_counter(), time.process_time()
            db = open_db(tmp, f"run{i}")
            open_s = time.perf_counter() - start
            apply_s = plugin_apply(db, model_dir, settings, seq, os.path.join(tmp, f"plug{i}"))
            db.disconnect()
            plugins.append(open_s + apply_s)
            plugin_cpu.append(time.process_time() - cpu)
    plain, plugin = min(plains), min(plugins)
    return {
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "size": args.size,
        "steps": args.steps,
        "save_steps": args.save_steps,
        "plain_s": [round(x, 2) for x in plains],
        "plugin_s": [round(x, 2) for x in plugins],
        "plugin_over_plain": round(plugin / plain, 3),
        "plain_cpu_s": [round(x, 2) for x in plain_cpu],
        "plugin_cpu_s": [round(x, 2) for x in plugin_cpu],
        "plugin_over_plain_cpu": round(min(plugin_cpu) / min(plain_cpu), 3),
        "plain_slowest_over_fastest": round(max(plains) / plain, 3),
    }


def saves(args) -> dict:
    """Time and datalayer reads of every ``LLMCallback.on_save`` of one run."""
    from superduper.base.datalayer import Datalayer

    from superduper_transformers.launch.callback import LLMCallback

    seconds, loads, statements, current = [], [], [], {"loads": 0, "sql": 0}
    original_save, original_load = LLMCallback.on_save, Datalayer.load

    def counted_load(self, *a, **k):
        current["loads"] += 1
        return original_load(self, *a, **k)

    def timed_save(self, *a, **k):
        current.update(loads=0, sql=0)
        start = time.perf_counter()
        original_save(self, *a, **k)
        seconds.append(time.perf_counter() - start)
        loads.append(current["loads"])
        statements.append(current["sql"])

    def count_statement(_sql):
        current["sql"] += 1

    settings = common_settings(args.saves, 1, 8, False)
    settings.update(save_total_limit=args.limit or None, logging_steps=args.saves)
    LLMCallback.on_save, Datalayer.load = timed_save, counted_load
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = os.path.join(tmp, "model")
            build_model(model_dir, "tiny")
            db = open_db(tmp, "data")
            fill(db, rows(64, 64))
            sqlite_connection(db).set_trace_callback(count_statement)  # every statement, sqlite's trace
            plugin_apply(db, model_dir, settings, 64, os.path.join(tmp, "out"))
            sqlite_connection(db).set_trace_callback(None)
            db.disconnect()
    finally:
        LLMCallback.on_save, Datalayer.load = original_save, original_load
    tenth = max(1, len(seconds) // 10)
    first, last = seconds[:tenth], seconds[-tenth:]
    return {
        "saves": len(seconds),
        "save_total_limit": args.limit or None,
        "first_saves_mean_s": round(sum(first) / len(first), 4),
        "last_saves_mean_s": round(sum(last) / len(last), 4),
        "last_over_first": round((sum(last) / len(last)) / (sum(first) / len(first)), 2),
        "loads_per_save_first_last": [loads[0], loads[-1]],
        # the first save of a database also creates the checkpoint and history tables
        "sql_statements_first_save": statements[0],
        "sql_statements_per_save_after": [min(statements[1:]), max(statements[1:])],
        "seconds_by_save": [round(s, 4) for s in seconds],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["ratio", "saves"])
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--save-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each arm (ratio)")
    parser.add_argument("--saves", type=int, default=100)
    parser.add_argument("--limit", type=int, default=3, help="save_total_limit (0: keep every checkpoint)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    result = ratio(args) if args.part == "ratio" else saves(args)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

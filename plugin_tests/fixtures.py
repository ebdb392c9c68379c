"""Test data and a tiny model, built at test time. Shared by tests and subprocess scripts."""

from __future__ import annotations

import os
import typing as t

from transformers import TrainerCallback

#: 32 prompts the model must memorise: "a+b=" -> "c".
FACTS = [(f"{a}+{b}=", str(a + b)) for a in range(8) for b in range(4)]
VALID = FACTS[::4]  # evaluation rows (eval loss only; the task is memorisation)
#: Half the facts (b = 1 or 3): what the tests of each training mode memorise. Measured
#: learning curves (16/16 reached at, native bf16 CPU / AVX2 kernels in fp32): LoRA 64/64
#: steps, full fine-tuning 50/50, QLoRA 4-bit 96/96 (then 14-16 on AVX2), 8-bit 64/64, chat
#: format 150/180, whole text 90/90. The tests give each about 2.5x that.
FACTS16 = FACTS[1::2]
VALID16 = FACTS16[::4]

#: Settings that make the tiny model memorise FACTS in a few hundred CPU steps.
FAST_TRAINING = dict(
    learning_rate=3e-3,
    lr_scheduler_type="constant",
    per_device_train_batch_size=8,
    per_device_eval_batch_size=8,
    logging_steps=25,
    seed=0,
    use_cpu=True,
    dataloader_num_workers=0,
    disable_tqdm=True,
)


#: Words whose merges the tokenizer of ``build_tiny_model(merges=True)`` learns. llama.cpp
#: reads a byte-level vocabulary only with merges; these never touch "a+b=c" (digits and
#: symbols are pre-tokenized apart from letters), so the facts tokenize as without them.
MERGE_WORDS = ["user", "assistant", "system", "start", "end", "hello", "world"]


def build_tiny_model(directory: str, merges: bool = False) -> str:
    """Save a randomly initialised 2-layer Llama and a byte-level BPE tokenizer to ``directory``.

    :param merges: Give the tokenizer 24 merges of :data:`MERGE_WORDS` (as real tokenizers
        have; the GGUF export needs them), else none.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>"]
    # Vocabulary = the 256 byte symbols + specials (+ merges of letters only): "5+1=" and
    # "5+1=6" split at the same place and the prompt boundary is a token boundary.
    trainer = trainers.BpeTrainer(
        vocab_size=256 + len(specials) + (24 if merges else 0),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(MERGE_WORDS * 10 if merges else [p + c for p, c in FACTS], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.save_pretrained(directory)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def insert_rows(db, table: str = "facts", facts=FACTS, valid=VALID) -> None:
    """Create ``table`` (x, y, _fold) and insert the training and validation rows."""
    from superduper import Table

    db.apply(Table(table, fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    rows = [{"x": p, "y": c, "_fold": "train"} for p, c in facts]
    rows += [{"x": p, "y": c, "_fold": "valid"} for p, c in valid]
    db[table].insert(rows)


def make_llm(db, model_dir: str, identifier: str = "tiny", table: str = "facts", **trainer_kwargs):
    """An ``LLM`` over the tiny model with an ``LLMTrainer`` on ``table``."""
    from superduper_transformers import LLM, LLMTrainer

    settings = dict(FAST_TRAINING)
    settings.update(
        key=("x", "y"),
        select=db[table].select(),
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        max_steps=250,
        save_steps=50,
        save_total_limit=3,
        eval_strategy="steps",
        eval_steps=50,
        output_dir=os.path.join(os.path.dirname(db.cfg.artifact_store.split("://")[-1]), "out", identifier),
    )
    settings.update(trainer_kwargs)
    trainer = LLMTrainer(f"{identifier}-trainer", **settings)
    return LLM(
        identifier,
        model_name_or_path=model_dir,
        trainer=trainer,
        predict_kwargs={"max_new_tokens": 4},
    )


def answered(llm, facts=FACTS) -> int:
    """How many prompts the model answers exactly (greedy)."""
    outputs = llm.predict_batches([p for p, _ in facts])
    return sum(o.strip() == c for o, (_, c) in zip(outputs, facts))


def answers(llm, facts=FACTS) -> t.List[str]:
    """The model's greedy answers to the prompts."""
    return [o.strip() for o in llm.predict_batches([p for p, _ in facts])]


def interrupt_at(monkeypatch, step: int) -> None:
    """Make trainings in this process fail at ``step`` (an interruption without a kill)."""
    import dataclasses as dc

    from transformers import TrainerCallback

    from superduper_transformers.hf import train as hf_train

    class Fail(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise RuntimeError(f"interrupted at step {step}")

    run_job = hf_train.run_job

    def failing(job):
        return run_job(dc.replace(job, callbacks=[*job.callbacks, Fail()]))

    monkeypatch.setattr(hf_train, "run_job", failing)


#: Events seen by :class:`RecordingCallback` instances in this process: (tag, event, step).
CALLBACK_EVENTS: t.List[t.Tuple[str, str, int]] = []


class RecordingCallback(TrainerCallback):
    """A user callback, given to ``LLMTrainer(callbacks=...)`` by its import path."""

    def __init__(self, tag: str = "user", path: t.Optional[str] = None):
        self.tag = tag
        self.path = path  # events of other processes (Ray workers) are appended there

    def _record(self, event: str, state) -> None:
        CALLBACK_EVENTS.append((self.tag, event, state.global_step))
        if self.path:
            with open(self.path, "a") as f:
                f.write(f"{self.tag} {event} {state.global_step} {state.is_world_process_zero}\n")

    def on_step_end(self, args, state, control, **kwargs):
        self._record("step_end", state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._record("log", state)

    def _weights(self, event: str, state, model) -> None:
        """A checksum of the trainable weights (``<path>.weights``): Ray workers that train
        one model (their gradients all-reduced) end with the same checksum."""
        if self.path and model is not None:
            total = sum(float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad)
            with open(f"{self.path}.weights", "a") as f:
                f.write(f"{event} {state.global_step} {state.is_world_process_zero} {total!r}\n")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._weights("begin", state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._weights("end", state, model)


class HoldAt(TrainerCallback):
    """Wait at the end of ``step`` until the file ``until`` exists (tests stop a training
    at a known step without racing its speed); ``<until>.holding`` says it waits."""

    def __init__(self, step: int, until: str):
        self.step = step
        self.until = until

    def on_step_end(self, args, state, control, **kwargs):
        import time

        if state.global_step != self.step:
            return
        open(f"{self.until}.holding", "w").close()
        while not os.path.exists(self.until):
            time.sleep(0.05)


def exact_match(predictions: t.Sequence[str], targets: t.Sequence[str]) -> float:
    """Share of generations that are exactly the target (an ``ImportedMetric``'s function)."""
    return sum(str(p).strip() == str(y).strip() for p, y in zip(predictions, targets)) / max(len(targets), 1)


def raw_output_rows(db, table: str) -> t.List[t.Dict[str, t.Any]]:
    """A listener's outputs ``table`` as the backend holds it (nothing decoded), sorted, the
    output column named ``value``, each value with its type's name: an id stored as str
    where superduper stores an ObjectId, or a dict where it stores JSON text, differs."""
    backend = getattr(db.databackend, "_backend", db.databackend)
    if str(db.cfg.data_backend).startswith("sqlite://"):
        with backend.connection_manager.get_connection() as conn:
            cursor = conn.con.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, r)) for r in cursor.fetchall()]
    else:
        rows = list(backend._database[table].find())
    renamed = [{("value" if k == table else k): (type(v).__name__, v) for k, v in r.items()} for r in rows]
    return sorted(renamed, key=repr)


def decoded_output_rows(db, table: str) -> t.List[t.Dict[str, t.Any]]:
    """superduper's own reading of a listener's outputs ``table``, the output column named ``value``."""
    rows = [{("value" if k == table else k): v for k, v in r.items()} for r in db[table].select().execute()]
    return sorted(rows, key=repr)


def superduper_reads_and_writes(monkeypatch) -> t.Tuple[t.List[str], t.List[str]]:
    """Two lists that fill with the tables superduper's ``select.subset`` (how its
    ``Listener`` reads new rows) and its ``insert`` are called on from now on."""
    from superduper.base import query

    subsets: t.List[str] = []
    inserts: t.List[str] = []
    subset, insert = query.Query.subset, query.insert
    monkeypatch.setattr(
        query.Query, "subset", lambda self, ids: subsets.append(self.table) or subset(self, ids)
    )
    # Queries bind the module's ``insert`` when they are made.
    monkeypatch.setattr(
        query, "insert", lambda self, docs, raw=False: inserts.append(self.table) or insert(self, docs, raw)
    )
    return subsets, inserts

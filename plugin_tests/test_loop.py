"""The loop in the database: a trained model answers rows as a ``Listener``, follows an alias.

One mongomock datalayer is trained once for the module: ``tiny``, 4 LoRA steps with a
checkpoint at steps 2 and 4 (mechanics only: the answers are not asserted).
"""

from __future__ import annotations

import pytest

from plugin_tests import fixtures
from superduper_transformers import LLM, promote
from superduper_transformers.checkpoint import list_checkpoints, load_checkpoint


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    from superduper import CFG, superduper

    data = tmp_path_factory.mktemp("loop-data")
    old = CFG.artifact_store
    CFG.artifact_store = f"filesystem://{data / 'artifact_store'}"
    try:
        db = superduper(f"mongomock://loop-{data.name}", force_apply=True)
        fixtures.insert_rows(db)
        llm = fixtures.make_llm(
            db,
            tiny_model_dir,
            max_steps=4,
            save_steps=2,
            eval_steps=2,
            logging_steps=2,
            save_total_limit=None,
            output_dir=str(data / "out"),
        )
        db.apply(llm, force=True)
        steps = {r["step"]: r["identifier"] for r in list_checkpoints(db, "tiny")}
        assert sorted(steps) == [2, 4]
        promote.promote(db, "tiny", steps[2], alias="prod", by="tester")
        yield db, steps, tiny_model_dir
        db.disconnect()
    finally:
        CFG.artifact_store = old


def questions_table(db, name: str):
    from superduper import Table

    db.apply(Table(name, fields={"question": "str"}), force=True)


def stored_outputs(db, listener):
    """``{question: output}`` of the listener, joined on the source row's id."""
    table = db[listener.select.table]
    pid = table.primary_id.execute()
    rows = {r[pid]: r["question"] for r in table.select().execute()}
    return {rows[o["_source"]]: o[listener.outputs] for o in db[listener.outputs].select().execute()}


def test_a_listener_answers_inserted_rows_with_the_checkpoint_of_the_alias(trained):
    from superduper import Listener

    db, steps, model_dir = trained
    questions_table(db, "questions")
    db["questions"].insert([{"question": "1+1="}, {"question": "2+3="}])
    serving = LLM(
        "tiny-prod",
        model_name_or_path=model_dir,
        alias="prod",
        alias_model="tiny",
        record_checkpoint=True,
        max_batch_size=2,
        predict_kwargs={"max_new_tokens": 2},
    )
    listener = Listener("answers", model=serving, key="question", select=db["questions"].select())
    db.apply(listener, force=True)  # answers the rows already there

    db["questions"].insert([{"question": f"{a}+2="} for a in range(5)])  # two batches and one row
    outputs = stored_outputs(db, listener)
    assert len(outputs) == 7
    assert {o["checkpoint"] for o in outputs.values()} == {steps[2]}
    assert all(isinstance(o["answer"], str) for o in outputs.values())

    promote.promote(db, "tiny", steps[4], alias="prod", by="tester")
    db["questions"].insert([{"question": "7+3="}])  # the listener is not re-applied
    outputs = stored_outputs(db, listener)
    assert outputs["7+3="]["checkpoint"] == steps[4]
    assert outputs["1+1="]["checkpoint"] == steps[2]


def test_a_listener_on_the_trained_model_stores_plain_text(trained):
    from superduper import Listener

    db, steps, _ = trained
    questions_table(db, "plain")
    llm = db.load("LLM", "tiny")
    listener = Listener("plain-answers", model=llm, key="question", select=db["plain"].select())
    db.apply(listener, force=True)
    db["plain"].insert([{"question": "1+2="}])
    assert [type(v) for v in stored_outputs(db, listener).values()] == [str]


def test_an_unknown_alias_is_named_with_the_fix(trained):
    db, _, model_dir = trained
    llm = LLM("tiny-beta", model_name_or_path=model_dir, alias="beta", alias_model="tiny")
    with pytest.raises(ValueError, match="`alias`='beta' is looked up in the datalayer: apply the model"):
        llm.predict("1+1=")
    llm.db = db
    with pytest.raises(promote.PromotionError, match="`alias`='beta' is not an alias of model `tiny`"):
        llm.predict("1+1=")


def test_feedback_becomes_kto_dpo_and_sft_rows_and_dpo_trains_on_them(trained, tmp_path):
    from superduper import Listener

    from superduper_transformers import LLMTrainer, feedback

    db, steps, model_dir = trained
    questions_table(db, "asked")
    serving = LLM(
        "tiny-fb",
        model_name_or_path=model_dir,
        alias="prod",
        alias_model="tiny",
        record_checkpoint=True,
        predict_kwargs={"max_new_tokens": 2, "min_new_tokens": 2},  # DPO refuses empty texts
    )
    listener = Listener("fb-answers", model=serving, key="question", select=db["asked"].select())
    db.apply(listener, force=True)
    db["asked"].insert([{"question": "1+1="}, {"question": "1+1="}, {"question": "2+2="}])
    out = db[listener.outputs]
    pid = out.primary_id.execute()
    a, b, c = [str(o[pid]) for o in out.select().execute()]
    prod = promote.promotions(db, "tiny").aliases["prod"]

    feedback.feedback_table(db)
    db["feedback"].insert(
        [
            {"output": a, "thumbs": "up"},
            {"output": c, "thumbs": "down"},
            {"output": a, "rejected": b},
            {"output": c, "correction": "4"},
        ]
    )
    kto = feedback.training_rows(db, listener, "kto", table="kto_rows")
    answer = {i: o[listener.outputs]["answer"] for i, o in zip((a, b, c), out.select().execute())}
    assert answer[a] == answer[b]  # greedy: the preference a over b carries nothing
    assert [(r["completion"], r["label"]) for r in kto] == [
        (answer[a], True),
        (answer[c], False),
        ("4", True),
        (answer[c], False),
    ]
    assert {r["checkpoint"] for r in kto} == {prod}
    sft = feedback.training_rows(db, listener, "sft", table="sft_rows")
    assert [(r["x"], r["y"]) for r in sft] == [("1+1=", answer[a]), ("1+1=", answer[a]), ("2+2=", "4")]
    dpo = feedback.training_rows(db, listener, "dpo", table="dpo_rows")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in dpo] == [("2+2=", "4", answer[c])]
    assert feedback.training_rows(db, listener, "dpo", table="dpo_rows") == []  # converted once
    assert len(db["dpo_rows"].select().execute()) == 1

    trainer = LLMTrainer(
        "fb-dpo-trainer",
        objective="dpo",
        key=("prompt", "chosen", "rejected"),
        select=db["dpo_rows"].select(),
        max_steps=2,
        save_steps=2,
        per_device_train_batch_size=1,
        output_dir=str(tmp_path / "dpo"),
        **{k: v for k, v in fixtures.FAST_TRAINING.items() if k != "per_device_train_batch_size"},
    )
    db.apply(LLM("tiny-dpo", model_name_or_path=model_dir, trainer=trainer), force=True)
    assert [r["step"] for r in list_checkpoints(db, "tiny-dpo")] == [2]

    with pytest.raises(feedback.FeedbackError, match=r"`objective` must be one of \['dpo', 'kto', 'sft'\]"):
        feedback.training_rows(db, listener, "ppo", table="x")
    db["feedback"].insert([{"output": "0" * 24, "thumbs": "up"}])
    with pytest.raises(feedback.FeedbackError, match=r"output\(s\) \[.0{24}.\] that are not in"):
        feedback.training_rows(db, listener, "sft", table="sft_rows")


def test_compare_stores_both_answers_per_row_and_the_metric_of_each(trained, capsys, monkeypatch):
    from superduper_transformers import cli
    from superduper_transformers.compare import SUMMARY_TABLE, CompareError, compare, win_rate

    db, steps, _ = trained
    result = compare(
        db, "tiny", 2, steps[4], table="facts", key="x", target="y",
        metric="plugin_tests.fixtures:exact_match", limit=4,
    )  # fmt: skip
    stored = [r for r in db["compare"].select().execute() if r["comparison"] == result.summary["comparison"]]
    assert [(r["prompt"], r["target"]) for r in stored] == [(p, c) for p, c in fixtures.FACTS[:4]]
    assert all(isinstance(r["answer_a"], str) and isinstance(r["answer_b"], str) for r in stored)
    summary = [
        s for s in db[SUMMARY_TABLE].select().execute() if s["comparison"] == result.summary["comparison"]
    ]
    assert len(summary) == 1
    s = summary[0]
    assert (s["checkpoint_a"], s["checkpoint_b"], s["rows"]) == (steps[2], steps[4], 4)
    exact = fixtures.exact_match
    assert s["score_a"] == exact([r["answer_a"] for r in stored], [c for _, c in fixtures.FACTS[:4]])
    assert s["score_b"] == exact([r["answer_b"] for r in stored], [c for _, c in fixtures.FACTS[:4]])

    # people judge the side-by-side rows: a win rate
    pid = db["compare"].primary_id.execute()
    db.apply(
        __import__("superduper").Table("votes", fields={"output": "str", "preferred": "str"}), force=True
    )
    db["votes"].insert(
        [
            {"output": str(stored[0][pid]), "preferred": "b"},
            {"output": str(stored[1][pid]), "preferred": "tie"},
        ]
    )
    assert win_rate(db, result.summary["comparison"], "votes") == {"a": 0.25, "b": 0.75, "judged": 2}

    monkeypatch.setattr(cli.common, "connect", lambda args: db)
    assert cli.main(["compare", "tiny", "2", "4", "--table", "facts", "--key", "x", "--target", "y",
                     "--metric", "plugin_tests.fixtures:exact_match", "--limit", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"a: {steps[2]}" in out and f"b: {steps[4]}" in out and "0+1=" in out
    assert "plugin_tests.fixtures:exact_match: a " in out
    assert (
        cli.main(["compare", "tiny", "prod", "4", "--table", "facts", "--key", "x", "--metric", "nope"]) == 2
    )
    assert "must be 'module:function'" in capsys.readouterr().err
    with pytest.raises(CompareError, match="needs `target`"):
        compare(db, "tiny", 2, 4, table="facts", key="x", metric="plugin_tests.fixtures:exact_match")
    with pytest.raises(CompareError, match=r"no column\(s\) \['question'\]"):
        compare(db, "tiny", 2, 4, table="facts", key="question")


def test_the_gate_promotes_a_candidate_not_worse_by_the_margin_and_records_each_decision(trained):
    from superduper_transformers.gate import ROUNDS_TABLE, gate, not_worse

    assert not_worse(0.5, 0.55, margin=0.1) and not not_worse(0.5, 0.7, margin=0.1)
    assert not not_worse(0.5, 0.5, margin=-0.1)  # a negative margin demands an improvement
    db, steps, _ = trained
    promote.promote(db, "tiny", steps[2], alias="prod", by="tester")
    common = dict(table="facts", key="x", target="y", metric="plugin_tests.fixtures:exact_match")
    rejected = gate(db, "tiny", 4, margin=-1.0, **common)  # must beat prod by 1: impossible
    assert promote.promotions(db, "tiny").aliases["prod"] == steps[2]
    promoted = gate(db, "tiny", 4, margin=1.0, **common)
    assert promote.promotions(db, "tiny").aliases["prod"] == steps[4]
    assert promote.promotions(db, "tiny").history[-1]["by"] == "gate"
    rows = [r for r in db[ROUNDS_TABLE].select().execute()]
    assert [(r["candidate"], r["prod"], r["decision"]) for r in rows] == [
        (steps[4], steps[2], "rejected"),
        (steps[4], steps[2], "promoted"),
    ]
    assert rejected["score_candidate"] == promoted["score_candidate"]


def test_outputs_and_feedback_rows_on_sqlite(sqlite_db, tiny_model_dir, monkeypatch):
    """The CLI's datalayer (superduper-sql): JSON outputs, feedback rows with unset columns;
    an ``LLMListener`` beside the ``Listener`` stores the same rows without superduper's
    reads and writes."""
    from superduper import Listener

    from superduper_transformers import LLMListener, feedback

    db = sqlite_db
    questions_table(db, "q")
    llm = LLM(
        "base",
        model_name_or_path=tiny_model_dir,
        record_checkpoint=True,
        predict_kwargs={"max_new_tokens": 2, "min_new_tokens": 2},
    )
    listener = Listener("sql-answers", model=llm, key="question", select=db["q"].select())
    db.apply(listener, force=True)
    ours = LLMListener("sql-answers-ours", model=llm, key="question", select=db["q"].select())
    db.apply(ours, force=True)
    subsets, inserts = fixtures.superduper_reads_and_writes(monkeypatch)
    db["q"].insert([{"question": "1+1="}, {"question": "2+2="}])
    assert subsets == ["q"] and ours.outputs not in inserts  # the `Listener`'s read, not ours
    assert len(fixtures.raw_output_rows(db, ours.outputs)) == 2
    assert fixtures.raw_output_rows(db, ours.outputs) == fixtures.raw_output_rows(db, listener.outputs)
    assert fixtures.decoded_output_rows(db, ours.outputs) == fixtures.decoded_output_rows(
        db, listener.outputs
    )
    out = db[listener.outputs]
    ids = [str(o[out.primary_id.execute()]) for o in out.select().execute()]
    assert [o[listener.outputs]["checkpoint"] for o in out.select().execute()] == [None, None]
    feedback.feedback_table(db)
    db["feedback"].insert([{"output": ids[0], "thumbs": "up"}, {"output": ids[1], "correction": "4"}])
    rows = feedback.training_rows(db, listener, "sft", table="sft")
    assert [(r["x"], r["_fold"]) for r in rows] == [("1+1=", "train"), ("2+2=", "train")]
    assert rows[1]["y"] == "4" and len(db["sft"].select().execute()) == 2


def test_a_listener_loads_the_weights_once_and_its_cost_does_not_grow_per_row(trained, monkeypatch):
    """superduper rebuilds the listener and its model for every insert's job and, with
    its own ``Listener``, hashes the whole listener for every output row."""
    from superduper.components.component import Component

    from superduper_transformers import LLMListener
    from superduper_transformers.hf import loaded, loading

    db, steps, model_dir = trained
    questions_table(db, "counted")
    loaded.forget()  # weights an earlier test loaded in this process
    loads, hashes = [], []
    load, tree = loading.load_causal_lm, Component.get_merkle_tree
    monkeypatch.setattr(loading, "load_causal_lm", lambda kwargs: loads.append(1) or load(kwargs))
    monkeypatch.setattr(
        Component, "get_merkle_tree", lambda self, breaks: hashes.append(1) or tree(self, breaks)
    )
    serving = LLM(
        "tiny-counted",
        model_name_or_path=model_dir,
        adapter_id=load_checkpoint(db, steps[4]),
        record_checkpoint=True,
        predict_kwargs={"max_new_tokens": 1},
    )
    listener = LLMListener("counted-answers", model=serving, key="question", select=db["counted"].select())
    assert serving.uuid == Component.uuid.fget(serving)  # superduper's own version key
    assert listener.uuid == Component.uuid.fget(listener)
    db.apply(listener, force=True)

    per_insert = []
    for n in (1, 2, 12):
        hashes.clear()
        db["counted"].insert([{"question": f"{i}+{n}="} for i in range(n)])
        per_insert.append(len(hashes))
    assert len(loads) == 1  # one load for three inserts
    assert per_insert[2] == per_insert[1]  # 12 rows hash as much as 2
    outputs = stored_outputs(db, listener)
    assert len(outputs) == 15 and {o["checkpoint"] for o in outputs.values()} == {steps[4]}


def test_a_shadow_candidate_answers_every_new_row_beside_prod_and_is_not_served(trained, monkeypatch, capsys):
    from superduper_transformers import LLMListener, cli
    from superduper_transformers.compare import win_rate
    from superduper_transformers.shadow import ShadowError, shadow, side_by_side

    db, steps, model_dir = trained
    promote.promote(db, "tiny", steps[2], alias="prod", by="tester")
    promote.promote(db, "tiny", steps[4], alias="candidate", by="tester")
    questions_table(db, "live")
    serving = LLM(
        "tiny-live",
        model_name_or_path=model_dir,
        alias="prod",
        alias_model="tiny",
        record_checkpoint=True,
        predict_kwargs={"max_new_tokens": 2},
    )
    prod = LLMListener("live-answers", model=serving, key="question", select=db["live"].select())
    db.apply(prod, force=True)
    candidate = shadow(db, "live-answers", "candidate")
    assert candidate.outputs != prod.outputs

    db["live"].insert([{"question": f"{a}+1="} for a in range(3)])
    served, shadowed = stored_outputs(db, prod), stored_outputs(db, candidate)
    assert set(served) == set(shadowed) == {"0+1=", "1+1=", "2+1="}  # one answer per row each
    assert {o["checkpoint"] for o in served.values()} == {steps[2]}
    assert {o["checkpoint"] for o in shadowed.values()} == {steps[4]}
    # What serving reads (the rows with the serving listener's outputs) holds prod's answers only.
    read = db["live"].select().outputs(prod.predict_id).execute()
    assert sorted(r[prod.outputs]["checkpoint"] for r in read) == [steps[2]] * 3

    result = side_by_side(db, "live-answers", candidate)
    assert sorted((r["prompt"], r["answer_a"], r["answer_b"]) for r in result.rows) == sorted(
        (q, served[q]["answer"].strip(), shadowed[q]["answer"].strip()) for q in served
    )
    assert (result.summary["checkpoint_a"], result.summary["checkpoint_b"]) == (steps[2], steps[4])
    pid = db["compare"].primary_id.execute()
    votes = [r for r in db["compare"].select().execute() if r["comparison"] == result.summary["comparison"]]
    db.apply(
        __import__("superduper").Table("shadow-votes", fields={"output": "str", "preferred": "str"}),
        force=True,
    )
    db["shadow-votes"].insert([{"output": str(votes[0][pid]), "preferred": "b"}])
    assert win_rate(db, result.summary["comparison"], "shadow-votes") == {"a": 0.0, "b": 1.0, "judged": 1}

    # The candidate alias moves: the shadow answers the next rows with it, unapplied.
    promote.promote(db, "tiny", steps[2], alias="candidate", by="tester")
    db["live"].insert([{"question": "9+9="}])
    assert stored_outputs(db, candidate)["9+9="]["checkpoint"] == steps[2]

    with pytest.raises(ShadowError, match=r"No listener `nope` in the datalayer; its listeners: \["):
        shadow(db, "nope")

    monkeypatch.setattr(cli.common, "connect", lambda args: db)
    capsys.readouterr()
    assert cli.main(["side-by-side", "live-answers", candidate.identifier]) == 0
    out = capsys.readouterr().out
    assert f"a: {steps[2]}" in out and "9+9=" in out
    assert cli.main(["shadow", "nope", "candidate"]) == 2
    assert "No listener `nope` in the datalayer" in capsys.readouterr().err

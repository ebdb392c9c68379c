"""``LLMListener`` stores the rows superduper's ``Listener`` stores, without superduper's reads
and writes where it writes natively (mongomock here; SQLite in ``test_loop.py``'s SQLite test,
beside its ``Listener``: each apply there costs a second)."""

from __future__ import annotations

from plugin_tests import fixtures
from superduper_transformers import LLM, LLMListener
from superduper_transformers.store import listener_rows

QUESTIONS = [f"{i}+{i % 3}=" for i in range(10)]


def test_llm_listener_stores_the_rows_listener_stores_without_superduper_reads_or_writes(
    tiny_model_dir, db, monkeypatch
):
    from superduper import Listener, Table

    db.apply(Table("q", fields={"question": "str"}), force=True)
    db["q"].insert([{"question": "0+0="}])  # answered when the listeners are applied
    pairs = []
    for record in (True, False):  # json outputs (answer and checkpoint), str outputs
        llm = LLM(
            f"m-{record}",
            model_name_or_path=tiny_model_dir,
            record_checkpoint=record,
            max_batch_size=4,
            predict_kwargs={"max_new_tokens": 3, "min_new_tokens": 3},
        )
        theirs = Listener(f"theirs-{record}", model=llm, key="question", select=db["q"].select())
        ours = LLMListener(f"ours-{record}", model=llm, key="question", select=db["q"].select())
        db.apply(theirs, force=True)
        db.apply(ours, force=True)
        pairs.append((theirs, ours))

    subsets, inserts = fixtures.superduper_reads_and_writes(monkeypatch)
    db["q"].insert([{"question": q} for q in QUESTIONS])

    assert subsets == ["q", "q"]  # the two `Listener`s read through superduper, ours did not
    assert not {ours.outputs for _, ours in pairs} & set(inserts)  # nor wrote through it
    for theirs, ours in pairs:
        assert len(fixtures.raw_output_rows(db, ours.outputs)) == len(QUESTIONS) + 1
        assert fixtures.raw_output_rows(db, ours.outputs) == fixtures.raw_output_rows(db, theirs.outputs)
        assert fixtures.decoded_output_rows(db, ours.outputs) == fixtures.decoded_output_rows(
            db, theirs.outputs
        )
        joined = {r["question"]: r[ours.outputs] for r in db["q"].select().outputs(ours.predict_id).execute()}
        assert joined == {
            r["question"]: r[theirs.outputs] for r in db["q"].select().outputs(theirs.predict_id).execute()
        }
    answers = {r["value"]["answer"] for r in fixtures.decoded_output_rows(db, pairs[0][1].outputs)}
    assert len(answers) > 1 and all(answers)  # generated answers, not placeholders

    # Outputs of a type written nowhere else go through superduper's insert: the same rows.
    monkeypatch.setattr(listener_rows, "write_outputs", lambda *args: None)
    db["q"].insert([{"question": "7+7="}, {"question": "8+8="}])
    assert {ours.outputs for _, ours in pairs} <= set(inserts)
    for theirs, ours in pairs:
        assert fixtures.raw_output_rows(db, ours.outputs) == fixtures.raw_output_rows(db, theirs.outputs)

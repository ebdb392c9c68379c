"""Training follows new rows: a ``Loop`` trains a round from ``prod`` after N new rows and
promotes its candidate only when it is not worse.

The story of the first test, on one mongomock datalayer: ``tiny`` is trained 2 steps
(``prod``: it knows none of the 8 facts of ``heldout``); a ``Listener`` following ``prod``
answers questions; people correct the answers (feedback); the 8th correction starts a
round, whose candidate learned the facts and replaces ``prod``, so the next questions get
the right answers. Wrong corrections then train a candidate that is rejected.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from plugin_tests import fixtures
from superduper_transformers import LLM, Loop, feedback, promote, rounds
from superduper_transformers.checkpoint import list_checkpoints
from superduper_transformers.loop import LoopError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: What ``prod`` learns first (b = 0), and the 8 facts rounds learn (b = 1 or 3).
FIRST = [(p, c) for p, c in fixtures.FACTS if p.endswith("+0=")][:2]
NEW = fixtures.FACTS16[:8]
METRIC = "plugin_tests.fixtures:exact_match"
#: A round: 60 steps over 8-12 rows. Measured from prod's adapter (native and AVX2 kernels
#: alike): the 8 facts answered 7/8 after 20 steps, 8/8 after 25.
ROUND = dict(max_steps=60, save_steps=60)


def _prod(db, model_dir: str, out: str) -> None:
    """``tiny`` trained 2 steps on FIRST; ``prod`` points at its checkpoint."""
    from superduper import Table

    fixtures.insert_rows(db, facts=FIRST, valid=[])
    llm = fixtures.make_llm(
        db,
        model_dir,
        max_steps=2,
        save_steps=2,
        eval_strategy="no",
        lora_modules_to_save=["lm_head"],
        output_dir=out,
    )
    db.apply(llm, force=True)
    promote.promote(db, "tiny", db.load("LLM", "tiny").adapter_id.identifier, alias="prod", by="tester")
    db.apply(Table("heldout", fields={"x": "str", "y": "str"}), force=True)
    db["heldout"].insert([{"x": p, "y": c} for p, c in NEW])


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """``tiny`` at ``prod``, a listener answering ``questions`` with ``prod``, a feedback table."""
    from superduper import CFG, Listener, Table, superduper

    data = tmp_path_factory.mktemp("rounds")
    old = CFG.artifact_store
    CFG.artifact_store = f"filesystem://{data / 'artifact_store'}"
    try:
        db = superduper(f"mongomock://rounds-{data.name}", force_apply=True)
        _prod(db, tiny_model_dir, str(data / "out"))
        db.apply(Table("questions", fields={"question": "str"}), force=True)
        serving = LLM(
            "tiny-prod",
            model_name_or_path=tiny_model_dir,
            alias="prod",
            alias_model="tiny",
            record_checkpoint=True,
            predict_kwargs={"max_new_tokens": 4},
        )
        db.apply(
            Listener("answers", model=serving, key="question", select=db["questions"].select()), force=True
        )
        feedback.feedback_table(db)
        yield db
        db.disconnect()
    finally:
        CFG.artifact_store = old


def _ask(db, prompts):
    """Insert questions; ``[(output id, answer, checkpoint)]`` of the listener for them."""
    listener = db.load("Listener", "answers")
    out = db[listener.outputs]
    pid = out.primary_id.execute()
    before = {str(o[pid]) for o in out.select().execute()}
    db["questions"].insert([{"question": p} for p in prompts])
    rows = [o for o in out.select().execute() if str(o[pid]) not in before]
    src = {
        str(s[db["questions"].primary_id.execute()]): s["question"]
        for s in db["questions"].select().execute()
    }
    by_prompt = {src[str(o["_source"])]: o for o in rows}
    return [
        (
            str(by_prompt[p][pid]),
            by_prompt[p][listener.outputs]["answer"].strip(),
            by_prompt[p][listener.outputs]["checkpoint"],
        )
        for p in prompts
    ]


def _correct(asked, targets) -> int:
    return sum(a == c for (_, a, _), c in zip(asked, targets))


def test_feedback_starts_a_round_that_promotes_a_better_candidate_and_rejects_a_worse_one(
    served, capsys, monkeypatch
):
    from superduper_transformers import cli
    from superduper_transformers.cli import query

    db = served
    prod0 = promote.promotions(db, "tiny").aliases["prod"]
    loop = Loop(
        "tiny-loop",
        model="tiny",
        table="fb_rows",
        feedback="feedback",
        listener="answers",
        validation_table="heldout",
        metric=METRIC,
        min_new_rows=8,
        replay_fraction=0.25,
        margin=0.1,
        training_kwargs=ROUND,
    )
    db.apply(loop, force=True)
    asked = _ask(db, [p for p, _ in NEW])
    answers = [c for _, c in NEW]
    before = _correct(asked, answers)
    assert {ckpt for *_, ckpt in asked} == {prod0}

    # 7 corrections: no round; the 8th starts one, whose candidate learned the facts
    db["feedback"].insert([{"output": i, "correction": c} for (i, _, _), c in zip(asked[:7], answers)])
    assert rounds.rounds(db, "tiny-loop") == [] and len(db["fb_rows"].select().execute()) == 7
    db["feedback"].insert([{"output": asked[7][0], "correction": answers[7]}])
    (first,) = rounds.rounds(db, "tiny-loop")
    assert first.states == ["started", "trained", "promoted"]
    assert (first.new_rows, first.replay_rows, first.prod) == (8, 0, prod0)
    assert first.score_candidate >= 0.75 and first.score_candidate >= first.score_prod + 0.5
    record = promote.promotions(db, "tiny")
    assert record.aliases["prod"] == first.candidate != prod0
    entry = record.history[-1]
    assert (entry["action"], entry["from"], entry["to"]) == ("promote", prod0, first.candidate)
    assert (entry["by"], entry["score_candidate"], entry["score_prod"]) == (
        "loop tiny-loop round 1",
        first.score_candidate,
        first.score_prod,
    )

    # new questions are answered by the candidate, with the facts it learned
    asked = _ask(db, [p for p, _ in NEW])
    assert {ckpt for *_, ckpt in asked} == {first.candidate}
    after = _correct(asked, answers)
    print(f"round 1: prod answered {before}/8, the promoted candidate {after}/8")
    assert after >= 7 and after >= before + 4

    # paused: 8 wrong corrections start no round; `runs` and `status` show the rounds
    monkeypatch.setattr(cli.common, "connect", lambda args: db)
    monkeypatch.setattr(query, "connect", lambda args: db)
    assert cli.main(["loop", "pause", "tiny", "--by", "tester"]) == 0
    db["feedback"].insert([{"output": i, "correction": "9"} for i, _, _ in asked])
    assert len(rounds.rounds(db, "tiny-loop")) == 1
    capsys.readouterr()
    assert cli.main(["runs", "tiny"]) == 0
    assert f"loop tiny-loop  round 1  promoted  candidate {first.candidate} (" in capsys.readouterr().out
    assert cli.main(["status", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "latest round: loop tiny-loop  round 1  promoted" in out and "rounds of tiny are paused" in out

    # resumed: the next wrong correction starts round 2; its candidate is rejected
    assert cli.main(["loop", "resume", "tiny"]) == 0
    db["feedback"].insert([{"output": asked[0][0], "correction": "9"}])
    second = rounds.rounds(db, "tiny-loop")[-1]
    assert second.states == ["started", "trained", "rejected"]
    assert (second.number, second.new_rows, second.replay_rows) == (2, 9, 3)
    assert second.score_candidate < second.score_prod - 0.1
    assert promote.promotions(db, "tiny").aliases["prod"] == first.candidate  # prod stays
    assert db.load("LLM", "tiny").adapter_id.identifier == first.candidate  # so does the model in use
    assert second.candidate in {c["identifier"] for c in list_checkpoints(db, "tiny")}  # kept
    entry = [e for e in promote.promotions(db, "tiny").history if e["action"] == "reject"][-1]
    assert (entry["candidate"], entry["to"], entry["score_candidate"]) == (
        second.candidate,
        first.candidate,
        second.score_candidate,
    )
    trained_on = [r for r in db[loop.rows_table].select().execute() if r["round_id"] == second.round_id]
    assert len(trained_on) == 12
    assert sum(r["y"] != "9" for r in trained_on) == 3  # the replayed rows: right answers of round 1
    assert cli.main(["loop", "rounds", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "round 1  promoted" in out and "round 2  rejected" in out and "9 new + 3 replayed rows" in out


def test_bad_settings_are_named_with_the_fix_before_anything_is_written(served):
    db = served
    with pytest.raises(
        LoopError,
        match=r"(?s)`metric`='nope' must be 'module:function'.*`min_new_rows`=0 must be.*`replay_fraction`=1.0 must be in \[0, 1\)",
    ):
        Loop(
            "bad",
            model="tiny",
            table="t",
            validation_table="heldout",
            metric="nope",
            min_new_rows=0,
            replay_fraction=1.0,
        )
    with pytest.raises(LoopError, match="`feedback`='feedback' and `listener`=None: set both"):
        Loop("bad", model="tiny", table="t", validation_table="heldout", metric=METRIC, feedback="feedback")
    common = dict(table="facts", validation_table="heldout", metric=METRIC)
    with pytest.raises(LoopError, match=r"`model`='nope' is not an LLM in the database \(models: \["):
        db.apply(Loop("bad", model="nope", **common), force=True)
    with pytest.raises(LoopError, match=r"`alias`='beta' is not an alias of `tiny`.*alias='beta'"):
        db.apply(Loop("bad", model="tiny", alias="beta", **common), force=True)
    with pytest.raises(
        LoopError, match=r"(?s)`validation_table`='gone' is not a table.*`metric`='x:y' does not import"
    ):
        db.apply(Loop("bad", model="tiny", table="facts", validation_table="gone", metric="x:y"), force=True)
    with pytest.raises(
        LoopError, match=r"`table`='questions' has no column\(s\) \['x', 'y'\]: a round trains"
    ):
        db.apply(
            Loop("bad", model="tiny", table="questions", validation_table="heldout", metric=METRIC),
            force=True,
        )
    assert "bad" not in db.show("Loop")


def test_a_round_that_fails_is_abandoned_and_its_rows_count_again(served, monkeypatch):
    """A round whose training raises: the insert that triggered it still succeeds, the round
    is recorded abandoned with the error, its training run is marked abandoned, the model and
    ``prod`` point where they did, and its rows are new again for the next round."""
    from superduper import Table

    from superduper_transformers.store import records

    db = served
    db.apply(Table("more", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    loop = Loop(
        "failing",
        model="tiny",
        table="more",
        validation_table="heldout",
        metric=METRIC,
        min_new_rows=2,
        training_kwargs=dict(max_steps=4, save_steps=2),
    )
    db.apply(loop, force=True)
    in_use = db.load("LLM", "tiny").adapter_id.identifier
    prod = promote.promotions(db, "tiny").aliases["prod"]
    fixtures.interrupt_at(monkeypatch, 1)
    db["more"].insert([{"x": p, "y": c, "_fold": "train"} for p, c in NEW[:2]])  # does not raise
    (r,) = rounds.rounds(db, "failing")
    assert r.states == ["started", "abandoned"] and "interrupted at step 1" in r.detail
    assert records.runs(db, "tiny")[-1].state == "abandoned" and not records.runs(db, "tiny", "running")
    assert db.load("LLM", "tiny").adapter_id.identifier == in_use
    assert promote.promotions(db, "tiny").aliases["prod"] == prod
    assert rounds.used_sources(db, "failing") == set()  # the 2 rows are new again


def test_rejected_rounds_beyond_keep_rejected_lose_their_checkpoints_and_nothing_else(served):
    """``keep_rejected=1``: each rejected round deletes the checkpoints (rows and folders in
    the artifact store) of the rejected rounds before it, unless something points at them:
    round 1's candidate, given an alias by hand, stays; round 2's goes when round 3 is
    rejected; round 3's, the newest, stays. Every checkpoint there before (``prod``'s,
    promoted ones, other loops') stays, and ``prod`` and the model in use do not move."""
    from superduper import Table

    from superduper_transformers.store import artifacts

    db = served
    db.apply(Table("wrong", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    loop = Loop(
        "pruning",
        model="tiny",
        table="wrong",
        validation_table="heldout",
        metric=METRIC,
        min_new_rows=2,
        margin=-2.0,  # a candidate must beat prod by 2 (scores are in [0, 1]): every round is rejected
        keep_rejected=1,
        training_kwargs=dict(max_steps=1, save_steps=1),
    )
    db.apply(loop, force=True)
    root = artifacts.store_root(db)

    def stored():
        return {c["identifier"]: os.path.join(root, c["artifact_id"]) for c in list_checkpoints(db, "tiny")}

    def reject_a_round(rows):
        known = stored()
        db["wrong"].insert([{"x": p, "y": "9", "_fold": "train"} for p, _ in rows])
        r = rounds.rounds(db, "pruning")[-1]
        assert r.state == "rejected"
        return r, {k: v for k, v in stored().items() if k not in known}

    before = stored()
    prod = promote.promotions(db, "tiny").aliases["prod"]
    in_use = db.load("LLM", "tiny").adapter_id.identifier
    first, first_files = reject_a_round(NEW[:2])
    promote.promote(db, "tiny", first.candidate, alias="staging", by="tester")  # someone looks at it
    second, second_files = reject_a_round(NEW[2:4])
    assert first.candidate in first_files and second.candidate in second_files
    assert all(map(os.listdir, {**first_files, **second_files}.values()))  # both kept so far
    third, third_files = reject_a_round(NEW[4:6])
    after = stored()
    assert third.number == 3 and list_checkpoints(db, "tiny", second.experiment_id) == []  # round 2's
    assert not any(map(os.path.exists, second_files.values()))  # rows and bytes gone
    assert first.candidate in after and all(map(os.listdir, first_files.values()))  # the alias keeps it
    assert third.candidate in after and all(map(os.listdir, third_files.values()))  # the newest: kept
    assert {k: v for k, v in after.items() if k in before} == before  # prod's, promoted, other loops'
    assert all(map(os.listdir, before.values()))
    assert promote.promotions(db, "tiny").aliases["prod"] == prod
    assert db.load("LLM", "tiny").adapter_id.identifier == in_use


def test_a_round_replays_rows_of_another_table(served):
    """``replay_table``: a round's earlier rows are drawn from another table too (here the
    rows ``tiny`` was first trained on), named in the ledger with that table's name; the
    table and its columns are checked when the loop is applied."""
    from superduper import Table

    db = served
    db.apply(Table("later", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    common = dict(model="tiny", table="later", validation_table="heldout", metric=METRIC)
    with pytest.raises(LoopError, match=r"`replay_table`='gone' is not a table in the database \(tables: "):
        db.apply(Loop("replaying", replay_table="gone", **common), force=True)
    with pytest.raises(LoopError, match=r"`replay_table`='questions' has no column\(s\) \['x', 'y'\]"):
        db.apply(Loop("replaying", replay_table="questions", **common), force=True)
    assert "replaying" not in db.show("Loop")
    loop = Loop(
        "replaying",
        replay_table="facts",
        replay_fraction=0.5,  # as many earlier rows as new ones
        min_new_rows=2,
        training_kwargs=dict(max_steps=1, save_steps=1),
        **common,
    )
    db.apply(loop, force=True)
    db["later"].insert([{"x": p, "y": c, "_fold": "train"} for p, c in NEW[6:]])
    (r,) = rounds.rounds(db, "replaying")
    assert r.states[:2] == ["started", "trained"] and (r.new_rows, r.replay_rows) == (2, 2)
    trained_on = sorted((x["x"], x["y"]) for x in db[loop.rows_table].select().execute())
    assert trained_on == sorted(NEW[6:] + FIRST)  # the new rows and the first training rows
    ledger = db["loop_ledger"].filter(db["loop_ledger"]["round_id"] == r.round_id).select().execute()
    replayed = [e["source"] for e in ledger if e["kind"] == "replay"]
    assert len(replayed) == 2 and all(s.startswith("facts:") for s in replayed)


def _own_connections(db) -> None:
    """Give ``db``, inherited through fork, database connections of this process (a SQLite
    connection must not cross a fork): those of a new backend. The datalayer keeps the rest,
    its scheduler included, which knows the loop's trigger (a new datalayer would load every
    component of the db first: ~10 s)."""
    backend = db.databackend._backend
    fresh = type(backend)(backend.uri, backend.plugin, backend.flavour)
    for name in ("connection_manager", "alchemy_engine", "sm"):
        _INHERITED.append(getattr(backend, name))  # never used, nor closed (SQLite's locks)
        setattr(backend, name, getattr(fresh, name))


_INHERITED: list = []


def _hold_trainings(step: int, until: str) -> None:
    """Make the trainings of this process wait after ``step`` until the file ``until`` exists
    (:class:`plugin_tests.fixtures.HoldAt`: ``<until>.holding`` says it waits)."""
    import dataclasses as dc

    from plugin_tests.fixtures import HoldAt
    from superduper_transformers.hf import train as hf_train

    run_job = hf_train.run_job
    hf_train.run_job = lambda job: run_job(dc.replace(job, callbacks=[*job.callbacks, HoldAt(step, until)]))


def _insert_at_once(db, barrier, rows, release: str, result: str) -> None:
    """One of two forked processes: wait for the other at ``barrier``, then insert ``rows``
    into ``new_rows`` at the same instant. A round it starts holds at step 5 until
    ``release`` exists and dies (SIGKILL) once its checkpoint of step 10 is recorded.
    Writes to ``result`` whether its trigger found a round running in another process."""
    from loguru import logger

    from superduper_transformers import _faults

    _own_connections(db)
    _hold_trainings(5, release)
    os.environ[_faults.ENV] = "registered:10"
    said: list = []
    logger.add(lambda m: said.append(str(m)), level="INFO", format="{message}")
    barrier.wait(timeout=120)
    db["new_rows"].insert(rows)
    with open(result, "w") as f:
        json.dump({"busy": any("runs in another process" in m for m in said)}, f)


def _raced(children, release) -> bool:
    """Whether the race is decided: one round holds and the other insert returned, or both
    hold a round (no lock), or both inserts returned."""
    holding = [os.path.exists(f"{r}.holding") for r in release]
    returned = [not c.is_alive() for c in children]
    return all(holding) or all(returned) or sorted(zip(holding, returned)) == [(False, True), (True, False)]


def test_two_processes_inserting_at_once_start_one_round_which_resumes_after_a_kill(
    sqlite_db, tiny_model_dir, tmp_path
):
    """Two processes, forked from this one, insert 8 rows each into a table a loop watches
    at the same instant (a barrier): each trigger alone sees ``min_new_rows``. One trigger
    takes the round lock and trains (held at step 5); the other returns at once, busy: one
    round, not two. While the round trains, this process inserts 8 rows too: no second round
    either. The round's process is then killed (SIGKILL) right after the round's checkpoint
    of step 10 is recorded; the next trigger here finishes the round, its training resumed
    from step 10. Every row is in that round or counts toward the next one, none in both."""
    import multiprocessing
    import threading

    from superduper import Table

    from superduper_transformers.store import records

    db = sqlite_db
    _prod(db, tiny_model_dir, str(tmp_path / "out"))
    db.apply(Table("new_rows", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    loop = Loop(
        "race",
        model="tiny",
        table="new_rows",
        validation_table="heldout",
        metric=METRIC,
        min_new_rows=8,
        training_kwargs=dict(max_steps=20, save_steps=10),
    )
    db.apply(loop, force=True)
    # fork copies this process's memory, not its threads: a lock another thread holds stays
    # held in the children. tqdm's monitor thread takes tqdm's write lock, which superduper's
    # logging writes through, every 10 s: stop it (a bar started later restarts it).
    for th in threading.enumerate():
        if th.name == "tqdm_monitor":
            th.exit()
    # No other Python thread (OMP_NUM_THREADS=1, no Ray). Not listed: a pytest-xdist worker's
    # receiver (execnet's raw thread, blocked on its pipe; the children never use it).
    assert threading.enumerate() == [threading.main_thread()]
    rows = [[{"x": p, "y": c, "_fold": "train"} for p, c in facts] for facts in (NEW, fixtures.FACTS16[8:])]
    release = [str(tmp_path / f"release-{i}") for i in range(2)]
    result = [str(tmp_path / f"result-{i}.json") for i in range(2)]
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    children = [
        ctx.Process(target=_insert_at_once, args=(db, barrier, rows[i], release[i], result[i]))
        for i in range(2)
    ]
    for c in children:
        c.start()
    try:
        deadline = time.time() + 300
        while not _raced(children, release):
            assert time.time() < deadline, "the two inserts neither returned nor held a round"
            time.sleep(0.05)
        holding = [os.path.exists(f"{r}.holding") for r in release]
        assert sorted(holding) == [False, True], f"rounds held in {holding.count(True)} processes"
        winner = holding.index(True)
        loser = children[1 - winner]
        loser.join()
        assert loser.exitcode == 0 and json.load(open(result[1 - winner])) == {"busy": True}
        (running,) = rounds.rounds(db, "race")  # one round, not two
        assert running.state == "started" and running.new_rows in (8, 16)
        db["new_rows"].insert([{"x": p, "y": "9", "_fold": "train"} for p, _ in NEW])  # during the round
        assert [r.round_id for r in rounds.rounds(db, "race")] == [running.round_id]
    finally:
        for r in release:
            open(r, "w").close()
        for c in children:
            c.join(timeout=300)
            if c.is_alive():
                c.kill()
    assert children[winner].exitcode == -9  # killed in the round's training

    (cut,) = rounds.rounds(db, "race")
    assert (cut.number, cut.state, cut.new_rows) == (1, "started", running.new_rows)
    assert [r.state for r in records.runs(db, "tiny")] == ["finished", "running"]  # its training, cut off
    db["new_rows"].insert([{"x": "7+2=", "y": "9", "_fold": "train"}])  # the next trigger

    (done,) = rounds.rounds(db, "race")  # finished; the rows since wait for round 2
    assert done.round_id == cut.round_id and done.states[:2] == ["started", "trained"]
    assert done.state in ("promoted", "rejected") and len(done.states) == 3
    run = db.load("TrainingRun", f"tiny-run-{done.experiment_id}")
    assert run.state == "finished" and [x["step"] for x in run.resumes] == [10]
    assert [c["step"] for c in list_checkpoints(db, "tiny", done.experiment_id)] == [10, 20]
    assert records.runs(db, "tiny", "running") == []
    # nothing half-written: the loop's rows are the round's, the winner's rows among them
    trained_on = db[loop.rows_table].select().execute()
    assert {r["round_id"] for r in trained_on} == {done.round_id} and len(trained_on) == done.new_rows
    taken = sorted((r["x"], r["y"]) for r in trained_on)
    assert set(taken) >= {(r["x"], r["y"]) for r in rows[winner]}
    since = {(p, "9") for p, _ in NEW} | {("7+2=", "9")}
    assert not since & set(taken)  # none of the rows inserted during the round or after it
    pid = db["new_rows"].primary_id.execute()
    ids = {str(r[pid]) for r in db["new_rows"].select().execute()}
    used = rounds.used_sources(db, "race")
    assert len(ids) == 25 and used <= ids and len(used) == done.new_rows  # the rest: the next round's
    print(f"the round took {done.new_rows} rows; {len(ids - used)} count toward the next round")

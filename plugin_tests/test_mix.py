"""Mixing several queries with weights (``LLMTrainer(mix=...)``): the mixed rows keep the
weights' proportions, follow the seed, and every source is in the run's lineage."""

from __future__ import annotations

import json
import math

import pytest

from plugin_tests import fixtures
from superduper_transformers.trainer_args import ConfigError

#: Rows of two sources told apart by their first character: "d" (domain), "g" (general).
DOMAIN = [(f"d{i}?", str(i % 10)) for i in range(800)]
GENERAL = [(f"g{i}?", str(i % 10)) for i in range(800)]


def _table(db, name, facts):
    from superduper import Table

    db.apply(Table(name, fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    rows = [{"x": p, "y": c, "_fold": "train"} for p, c in facts]
    db[name].insert(rows + [{"x": facts[0][0], "y": facts[0][1], "_fold": "valid"}])


@pytest.fixture
def mix_db(db):
    _table(db, "domain", DOMAIN)
    _table(db, "general", GENERAL)
    return db


def _mix(db, domain=0.7, general=0.3):
    return [
        {"select": db["domain"].select(), "weight": domain},
        {"select": db["general"].select(), "weight": general},
    ]


def _llm(db, model_dir, mix, **kwargs):
    settings = dict(select=None, mix=mix, eval_strategy="no", max_steps=2, save_steps=2)
    settings.update(kwargs)
    return fixtures.make_llm(db, model_dir, "mixed", **settings)


def _sources(db, model_dir, mix, **kwargs):
    """The plan of a mixed training and the source ("d"/"g") of each of its training rows."""
    from transformers import AutoTokenizer

    from superduper_transformers.trainer import preflight, tokenization_of, train_dataset

    llm = _llm(db, model_dir, mix, **kwargs)
    plan = preflight(llm, db)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ds = train_dataset(plan, tokenizer, tokenization_of(llm, llm.trainer))
    return plan, [tokenizer.decode(ids[:1]) for ids in ds["input_ids"]]


def test_the_mix_keeps_the_weights_over_many_batches(mix_db, tiny_model_dir):
    plan, sources = _sources(mix_db, tiny_model_dir, _mix(mix_db))
    # first_exhausted: the mix ends when the domain rows (70%) are all drawn.
    assert sources.count("d") == len(DOMAIN)
    assert 0 < sources.count("g") < len(GENERAL)
    batches = [sources[i : i + 8] for i in range(0, len(sources) - 7, 8)]
    assert len(batches) >= 100
    shares = [b.count("d") / 8 for b in batches]
    # Each row is drawn from "d" with p = 0.7: the share over n rows is within 3 standard
    # deviations (sqrt(p (1 - p) / n), 0.012 here) of 0.7.
    noise = 3 * math.sqrt(0.7 * 0.3 / (8 * len(batches)))
    assert abs(sum(shares) / len(shares) - 0.7) <= noise
    assert min(shares) < 0.7 < max(shares)  # drawn row by row, not in blocks
    # weights need not sum to 1: 7 and 3 are 0.7 and 0.3
    _, same = _sources(mix_db, tiny_model_dir, _mix(mix_db, 7, 3))
    assert same == sources


def test_the_mix_follows_the_seed(mix_db, tiny_model_dir):
    _, first = _sources(mix_db, tiny_model_dir, _mix(mix_db), seed=1)
    _, again = _sources(mix_db, tiny_model_dir, _mix(mix_db), seed=1)
    _, other = _sources(mix_db, tiny_model_dir, _mix(mix_db), seed=2)
    assert first == again
    assert other != first


def test_each_source_is_in_the_lineage_and_a_weight_changes_it(mix_db, tiny_model_dir):
    from superduper_transformers.plan import from_job
    from superduper_transformers.trainer import preflight

    llm = _llm(mix_db, tiny_model_dir, _mix(mix_db))
    plan = preflight(llm, mix_db)
    fp = plan.fingerprint
    # a fit job run from its row (another process) rebuilds the same mix, rows not read again
    rebuilt = from_job(json.loads(json.dumps(plan.to_json())), llm, mix_db)
    assert (rebuilt.mix, rebuilt.mix_strategy) == (plan.mix, "first_exhausted")
    assert [p._count for p in rebuilt.rows["train"].parts] == [len(DOMAIN), len(GENERAL)]
    assert [(s["query"], s["weight"], s["share"], s["train_rows"]) for s in fp["sources"]] == [
        ("domain.select()", 0.7, 0.7, len(DOMAIN)),
        ("general.select()", 0.3, 0.3, len(GENERAL)),
    ]
    assert fp["train_rows"] == len(DOMAIN) + len(GENERAL)
    assert fp["query"] == "mix(domain.select() @ 0.7, general.select() @ 0.3; first_exhausted)"
    assert fp["mix"]["seed"] == fixtures.FAST_TRAINING["seed"]
    reweighted = preflight(_llm(mix_db, tiny_model_dir, _mix(mix_db, 0.5, 0.5)), mix_db).fingerprint
    assert reweighted != fp
    assert reweighted["query"] != fp["query"]
    assert [s["share"] for s in reweighted["sources"]] == [0.5, 0.5]
    # the rows are the same: only the weights changed
    assert [s["train_sha256"] for s in reweighted["sources"]] == [s["train_sha256"] for s in fp["sources"]]


def test_a_mixed_training_records_its_sources_in_the_db(mix_db, tiny_model_dir):
    from superduper_transformers.checkpoint import list_checkpoints

    mix_db.apply(_llm(mix_db, tiny_model_dir, _mix(mix_db)), force=True)
    ckpts = list_checkpoints(mix_db, "mixed")
    assert [c["step"] for c in ckpts] == [2]
    fp = mix_db.load("Checkpoint", ckpts[0]["identifier"]).data_fingerprint
    assert [s["query"] for s in fp["sources"]] == ["domain.select()", "general.select()"]
    # stored as JSON and loaded back: the same mix, `select` is its first source
    trainer = mix_db.load("LLM", "mixed").trainer
    assert [(m["select"]["label"], m["weight"]) for m in trainer.mix] == [
        ("domain.select()", 0.7),
        ("general.select()", 0.3),
    ]
    assert str(trainer.select) == "domain.select()"


BAD_MIXES = [
    ([{"select": None, "weight": 1}], r"`mix\[0\]\['select'\]` must be a superduper query"),
    ("weights", r"`mix\[1\]\['weight'\]` must be a positive number .* got -0.3"),
    ("zero", r"`mix\[0\]\['weight'\]` must be a positive number .* got 0"),
    ("twice", r"`mix\[1\]\['select'\]` \(domain.select\(\)\) is also `mix\[0\]`"),
    ([], r"`mix` must be a non-empty list"),
    ("key", r"`mix\[0\]` has unknown keys \['wieght'\]"),
]


@pytest.mark.parametrize("mix,match", BAD_MIXES, ids=["select", "negative", "zero", "twice", "empty", "key"])
def test_bad_mixes_are_refused_before_anything_is_written(db, tiny_model_dir, mix, match):
    mix_db = db  # the queries need no rows
    domain, general = mix_db["domain"].select(), mix_db["general"].select()
    named = {
        "weights": [{"select": domain, "weight": 0.7}, {"select": general, "weight": -0.3}],
        "zero": [{"select": domain, "weight": 0}],
        "twice": [{"select": domain, "weight": 0.5}, {"select": mix_db["domain"].select(), "weight": 0.5}],
        "key": [{"select": domain, "wieght": 1}],
    }
    mix = named[mix] if isinstance(mix, str) else mix
    with pytest.raises(ConfigError, match=match):
        _llm(mix_db, tiny_model_dir, mix)
    assert "mixed" not in mix_db.show("LLM")


def test_an_empty_source_and_a_strategy_are_named(mix_db, tiny_model_dir):
    from superduper import Table

    from superduper_transformers.hf.data import DataError
    from superduper_transformers.trainer import preflight

    with pytest.raises(ConfigError, match=r"`mix_strategy` must be one of .* got 'longest'"):
        _llm(mix_db, tiny_model_dir, _mix(mix_db), mix_strategy="longest")
    mix_db.apply(Table("empty", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    mix = [*_mix(mix_db), {"select": mix_db["empty"].select(), "weight": 0.1}]
    with pytest.raises(DataError, match=r"`mix\[2\]` \(empty.select\(\)\) has no rows with `_fold='train'`"):
        preflight(_llm(mix_db, tiny_model_dir, mix), mix_db)
    with pytest.raises(ConfigError, match="`select` .* and `mix` both give training rows"):
        _llm(mix_db, tiny_model_dir, _mix(mix_db), select=mix_db["facts"].select())


MIX_CONFIG = """
model: {{identifier: mixed, model_name_or_path: {model}}}
data:
  key: [x, y]
  mix:
    - {{table: domain, weight: 0.7}}
    - {{table: general, filter: {{y: "6"}}, weight: {weight}}}
trainer: {{mix_strategy: all_exhausted, max_steps: 2, use_cpu: true}}
"""


def test_a_config_mixes_tables_with_weights(mix_db, tiny_model_dir, tmp_path):
    from superduper_transformers.cli import config as schema
    from superduper_transformers.cli.train import build_llm, set_rows

    path = tmp_path / "mix.yaml"
    path.write_text(MIX_CONFIG.format(model=tiny_model_dir, weight=0.3))
    config, _, issues = schema.load_config(str(path))
    assert issues == []
    llm = build_llm(config, str(tmp_path / "out"), issues)
    set_rows(mix_db, llm, config.data)
    assert [(m["select"]["label"], m["weight"]) for m in llm.trainer.mix] == [
        ("domain.select()", 0.7),
        ('general.filter(general["y"] == "6").select()', 0.3),
    ]
    assert llm.trainer.mix_strategy == "all_exhausted"
    assert str(llm.trainer.select) == "domain.select()"

    path.write_text(MIX_CONFIG.format(model=tiny_model_dir, weight=-1))
    _, _, issues = schema.load_config(str(path), ["data.table=x"])
    assert issues == [
        "`data.table` and `data.mix` both give the rows: keep one.",
        "`data.mix[1].weight` must be a positive number (its share of the mix, e.g. 0.3), got -1. "
        "Remove the entry to leave its rows out.",
    ]

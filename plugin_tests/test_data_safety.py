"""Data safety: a shared artifact store, lost folders, unsafe identifiers, tampered manifests."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from plugin_tests import fixtures
from superduper_transformers import LLM, LLMTrainer
from superduper_transformers import checkpoint as ckpts
from superduper_transformers.checkpoint import (
    CheckpointError,
    file_manifest,
    list_checkpoints,
    load_checkpoint,
    register_checkpoint,
    verify_directory,
)
from superduper_transformers.store import artifacts, locks
from superduper_transformers.trainer_args import DEFAULT_OUTPUT_ROOT, output_dir_for


def _folder(path, files=None) -> str:
    """A checkpoint-like folder holding ``files`` ({relative name: bytes})."""
    files = files or {"adapter_model.safetensors": b"w" * 64, "sub/trainer_state.json": b"{}"}
    for rel, data in files.items():
        full = os.path.join(path, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
    return str(path)


def _register(db, tmp_path, model="tiny", step=10):
    source = _folder(tmp_path / "out" / f"checkpoint-{step}")
    return register_checkpoint(db, model=model, experiment_id="run1", path=source, step=step)


def _stored_folder(db, ckpt) -> str:
    return os.path.join(artifacts.store_root(db), ckpt.artifact_id)


# -- one artifact store, two databases ----------------------------------------


def test_cleanup_in_another_database_keeps_this_databases_checkpoints(db, tiny_model_dir, tmp_path):
    from superduper import superduper

    db.apply(fixtures.make_llm(db, tiny_model_dir, max_steps=10, save_steps=10, eval_steps=10), force=True)
    (row,) = list_checkpoints(db, "tiny")

    other = superduper(f"mongomock://other-{tmp_path.name}", force_apply=True)
    try:
        assert list_checkpoints(other, "tiny") == []  # it cannot see db's rows
        assert artifacts.cleanup_orphan_artifacts(other, "tiny") == []
        assert artifacts.cleanup_orphan_artifacts(other) == []
    finally:
        other.disconnect()
    load_checkpoint(db, row["identifier"])  # still there, verified

    orphan = os.path.join(artifacts.store_root(db), artifacts.new_artifact_id(db, "tiny"))
    os.makedirs(orphan)
    assert artifacts.cleanup_orphan_artifacts(db, "tiny") == [orphan]  # its own orphans go


def test_databases_with_the_same_uri_text_keep_each_others_checkpoints(artifact_store, tmp_path):
    # Two databases whose URIs read the same (staging and production, each
    # `mongodb://mongo:27017/app` on its own host), one artifact store: two mongomock
    # datalayers of one URI in one process hold separate data.
    from superduper import superduper

    first = superduper("mongomock://app", force_apply=True)
    second = superduper("mongomock://app", force_apply=True)
    try:
        mine = _register(first, tmp_path)
        assert list_checkpoints(second, "tiny") == []  # it cannot see first's rows
        assert artifacts.database_tag(first) != artifacts.database_tag(second)

        # A training start in `second` cleans up its model's orphans; then all of its own.
        assert artifacts.cleanup_orphan_artifacts(second, "tiny") == []
        assert artifacts.cleanup_orphan_artifacts(second) == []
        theirs = _register(second, tmp_path / "second")
        assert artifacts.cleanup_orphan_artifacts(first) == []

        load_checkpoint(first, mine.identifier)  # still there, verified
        load_checkpoint(second, theirs.identifier)
    finally:
        first.disconnect()
        second.disconnect()


def test_the_database_id_is_stored_in_the_database_and_created_once(sqlite_db, tmp_path):
    import threading

    from superduper import superduper

    from superduper_transformers.store import identity

    uri = f"sqlite:///{tmp_path / 'db.sqlite'}"
    others = [superduper(uri, force_apply=True) for _ in range(3)]
    try:
        # Three datalayers of a fresh database ask at once: one id is created, all read it.
        tags = [None] * 3
        threads = [
            threading.Thread(target=lambda i=i: tags.__setitem__(i, artifacts.database_tag(others[i])))
            for i in range(3)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(set(tags)) == 1 and tags[0].startswith(artifacts.CHECKPOINT_PREFIX)
        assert artifacts.database_tag(sqlite_db) == tags[0]
        assert sqlite_db.show("DatabaseIdentity") == [identity.IDENTIFIER]
        (row,) = sqlite_db["DatabaseIdentity"].execute()
        assert tags[0] == f"{artifacts.CHECKPOINT_PREFIX}{row['tag'][:12]}-"
    finally:
        for other in others:
            other.disconnect()


def test_folders_named_by_the_uri_tag_still_load_and_are_never_cleaned_up(db, tmp_path, monkeypatch):
    # Earlier versions named folders `ckpt-<sha256(URI)[:12]>-<model hash>-<random>`.
    def uri_tag(model):
        digest = hashlib.sha256(f"mongomock://{db.databackend.uri}".encode()).hexdigest()[:12]
        return f"ckpt-{digest}-{hashlib.sha256(model.encode()).hexdigest()[:12]}"

    with monkeypatch.context() as m:
        m.setattr(artifacts, "new_artifact_id", lambda db, model: f"{uri_tag(model)}-{'a' * 32}")
        old = _register(db, tmp_path, step=10)
    orphan = os.path.join(artifacts.store_root(db), f"{uri_tag('tiny')}-{'b' * 32}")
    os.makedirs(orphan)  # a crash leftover of those days: no row references it
    new = _register(db, tmp_path, step=20)
    assert not new.artifact_id.startswith(uri_tag("tiny"))

    assert artifacts.cleanup_orphan_artifacts(db, "tiny") == []
    assert artifacts.cleanup_orphan_artifacts(db) == []
    assert os.path.isdir(orphan)  # another database with this URI text could own it
    assert load_checkpoint(db, old.identifier).artifact_id == f"{uri_tag('tiny')}-{'a' * 32}"
    load_checkpoint(db, new.identifier)
    ckpts.remove_checkpoint(db, old.identifier)  # deleted with its row, as before
    assert not os.path.exists(_stored_folder(db, old))


# -- a checkpoint folder lost from the store ----------------------------------


def test_deleting_a_checkpoint_whose_folder_is_gone(db, tmp_path, monkeypatch):
    ckpt = _register(db, tmp_path)
    shutil.rmtree(_stored_folder(db, ckpt))
    warnings = []
    monkeypatch.setattr(ckpts.logging, "warn", lambda msg, *a, **k: warnings.append(msg))

    ckpts.remove_checkpoint(db, ckpt.identifier)

    assert list_checkpoints(db, "tiny") == []
    assert ckpt.identifier not in db.show("Checkpoint")
    assert any(ckpt.identifier in w and "is gone from the artifact store" in w for w in warnings)
    assert not os.path.exists(_stored_folder(db, ckpt))  # the stand-in folder is removed


def test_a_lost_checkpoint_folder_does_not_stop_pruning(db, tiny_model_dir, tmp_path, monkeypatch):
    register = ckpts.register_checkpoint

    def lose_step_10_then_register(db, **kwargs):
        if kwargs["step"] == 20:  # the folder of checkpoint 10 disappears from the store
            (row,) = list_checkpoints(db, "tiny")
            shutil.rmtree(os.path.join(artifacts.store_root(db), row["artifact_id"]))
        return register(db, **kwargs)

    monkeypatch.setattr(ckpts, "register_checkpoint", lose_step_10_then_register)
    llm = fixtures.make_llm(
        db,
        tiny_model_dir,
        max_steps=20,
        save_steps=10,
        eval_strategy="no",
        save_total_limit=1,
        output_dir=str(tmp_path / "out"),
    )
    db.apply(llm, force=True)  # pruning checkpoint 10 (folder gone) must not raise
    assert [r["step"] for r in list_checkpoints(db, "tiny")] == [20]
    assert db.load("LLM", "tiny").adapter_id.step == 20


def test_an_llm_whose_adapter_folder_is_gone_can_be_torn_down(db, tiny_model_dir, tmp_path):
    ckpt = _register(db, tmp_path)
    db.apply(LLM("lost", model_name_or_path=tiny_model_dir, adapter_id=ckpt), force=True)
    shutil.rmtree(_stored_folder(db, ckpt))

    with pytest.raises(CheckpointError, match=rf"Checkpoint `{ckpt.identifier}`: its files are missing"):
        db.load("LLM", "lost").adapter_path()  # using the weights still fails clearly
    db.teardown("LLM", "lost", force=True)
    assert "lost" not in db.show("LLM")
    ckpts.remove_checkpoint(db, ckpt.identifier)
    assert list_checkpoints(db, "tiny") == []


# -- the default output folder ------------------------------------------------


@pytest.mark.parametrize("identifier", ["../../x", "/etc/cron.d", "a/../../b", "..", "."])
def test_default_output_dir_stays_under_the_root(db, tmp_path, monkeypatch, identifier):
    monkeypatch.chdir(tmp_path)
    trainer = LLMTrainer("t", key=("x", "y"), select=db["facts"].select())
    path = output_dir_for(trainer, identifier)
    assert os.path.dirname(path) == str(tmp_path / DEFAULT_OUTPUT_ROOT)
    assert os.path.basename(path) not in ("", ".", "..")


def test_each_run_writes_its_own_folder_and_registers_its_own_step(db, tiny_model_dir, tmp_path):
    out = tmp_path / "out"  # one output folder for all three runs, as the default one is
    settings = dict(max_steps=2, save_steps=2, eval_strategy="no", output_dir=str(out))
    db.apply(fixtures.make_llm(db, tiny_model_dir, **settings), force=True)
    (lora,) = list_checkpoints(db, "tiny")

    # A full fine-tune of the same model: its checkpoint holds no file of the LoRA run.
    db.apply(fixtures.make_llm(db, tiny_model_dir, use_lora=False, **settings), force=True)
    (full,) = [r for r in list_checkpoints(db, "tiny") if r["experiment_id"] != lora["experiment_id"]]
    files = set(load_checkpoint(db, full["identifier"]).manifest)
    assert "model.safetensors" in files and "adapter_config.json" not in files

    # Recorded at the end only (log_to_db=False), a 1-step run registers its own step 1,
    # not the step-2 folder an earlier run left.
    shorter = dict(settings, max_steps=1, save_steps=1, log_to_db=False)
    db.apply(fixtures.make_llm(db, tiny_model_dir, use_lora=False, learning_rate=1e-3, **shorter), force=True)
    last = db.load("LLM", "tiny").adapter_id
    assert last.step == 1
    # Only the last run's local checkpoints are left: the ended runs' are in the store.
    assert sorted(os.listdir(out)) == sorted(
        {lora["experiment_id"], full["experiment_id"], last.experiment_id}
    )
    left = [n for r in (lora["experiment_id"], full["experiment_id"]) for n in os.listdir(out / r)]
    assert not [n for n in left if n.startswith("checkpoint-")], left
    assert os.path.isdir(out / last.experiment_id / "checkpoint-1")


def test_default_output_dir_is_readable_and_distinct(db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = LLMTrainer("t", key=("x", "y"), select=db["facts"].select())
    root = tmp_path / DEFAULT_OUTPUT_ROOT
    assert output_dir_for(trainer, "tiny") == str(root / "tiny")  # unchanged when safe
    assert output_dir_for(trainer, "a/b") != output_dir_for(trainer, "a_b")
    assert os.path.basename(output_dir_for(trainer, "org/model")).startswith("org_model-")


# -- manifests ----------------------------------------------------------------


def _entry(data: bytes):
    return [len(data), hashlib.sha256(data).hexdigest()]


@pytest.mark.parametrize("outside", ["../secret.txt", "ABS"])
def test_manifest_entries_outside_the_folder_are_refused(tmp_path, outside):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"s" * 12345)
    folder = _folder(tmp_path / "ckpt", {"a.bin": b"a"})
    rel = str(secret) if outside == "ABS" else outside
    manifest = {"a.bin": _entry(b"a"), rel: [1, "0" * 64]}
    with pytest.raises(
        CheckpointError, match=r"Checkpoint `c1`: its manifest names .*not a plain relative"
    ) as e:
        verify_directory(folder, manifest, "c1")
    assert "12345" not in str(e.value)  # nothing about the outside file leaks


def test_an_unexpected_manifest_entry_is_a_checkpoint_error(tmp_path):
    folder = _folder(tmp_path / "ckpt", {"a.bin": b"a"})
    for rel in ("./a.bin", "sub//a.bin"):
        with pytest.raises(CheckpointError, match=rf"Checkpoint `c1`: its manifest names '{rel}'"):
            verify_directory(folder, {rel: _entry(b"a")}, "c1")


def test_an_empty_manifest_on_a_non_empty_folder_is_an_error(tmp_path):
    folder = _folder(tmp_path / "ckpt", {"a.bin": b"a"})
    with pytest.raises(CheckpointError, match=r"Checkpoint `c1`: its manifest is empty but .* holds 1 file"):
        verify_directory(folder, {}, "c1")
    os.makedirs(tmp_path / "empty")
    verify_directory(str(tmp_path / "empty"), {}, "c1")  # nothing to vouch for


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_symlinks_in_a_checkpoint_are_refused(db, tmp_path, kind):
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "key.pem").write_bytes(b"KEY")
    folder = _folder(tmp_path / "out" / "checkpoint-10", {"a.bin": b"a"})
    target = tmp_path / "private" / ("key.pem" if kind == "file" else "")
    os.symlink(target, os.path.join(folder, "link"))

    with pytest.raises(CheckpointError, match=r"`link` in .* is a symbolic link"):
        file_manifest(folder)
    with pytest.raises(CheckpointError, match=r"Checkpoint `c1`: `link` .* is a symbolic link"):
        verify_directory(folder, {"a.bin": _entry(b"a")}, "c1")
    with pytest.raises(CheckpointError, match=r"is a symbolic link"):
        artifacts.store_directory(db, folder, artifacts.new_artifact_id(db, "tiny"), lambda p: None, 10)
    with pytest.raises(CheckpointError, match=r"is a symbolic link"):
        register_checkpoint(db, model="tiny", experiment_id="run1", path=folder, step=10)
    # nothing copied, not even partly (the lock file of the database id is no copy)
    assert [n for n in os.listdir(artifacts.store_root(db)) if n != locks.LOCKS_FOLDER] == []
    assert list_checkpoints(db, "tiny") == []


def _modes(folder):
    out = {}
    for root, _dirs, files in os.walk(folder):
        out[root] = os.stat(root).st_mode & 0o777
        for name in files:
            out[os.path.join(root, name)] = os.stat(os.path.join(root, name)).st_mode & 0o777
    return out


def test_stored_checkpoints_are_owner_only(db, tiny_model_dir, tmp_path):
    ckpt = _register(db, tmp_path)
    top = _stored_folder(db, ckpt)
    modes = _modes(top)
    assert len(modes) == 5  # top folder, checkpoint folder, sub folder, two files
    for path, mode in modes.items():
        expected = artifacts.DIR_MODE if os.path.isdir(path) else artifacts.FILE_MODE
        assert mode == expected, f"{path}: {oct(mode)}"

    # Every later apply that includes the checkpoint (here: a model pointing at it) makes
    # superduper chmod the top folder 0o777 again; it never touches what is inside.
    db.apply(LLM("m", model_name_or_path=tiny_model_dir, adapter_id=ckpt), force=True)
    db.load("LLM", "m").save()
    for path, mode in _modes(top).items():
        if path != top:
            assert mode == modes[path], f"{path}: {oct(mode)}"
    load_checkpoint(db, ckpt.identifier)  # still readable by its owner


def test_restrict_permissions_never_follows_a_link_to_a_folder(tmp_path):
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "f.txt").write_bytes(b"x")
    for path, mode in ((outside, 0o755), (outside / "sub", 0o755), (outside / "sub" / "f.txt", 0o644)):
        os.chmod(path, mode)
    before = _modes(outside)
    folder = _folder(tmp_path / "ckpt", {"a.bin": b"a", "sub/b.bin": b"b"})
    os.symlink(outside, os.path.join(folder, "sub", "link"))

    artifacts.restrict_permissions(folder)
    assert _modes(outside) == before  # the target of the link, and all below it, as they were
    assert set(_modes(folder).values()) == {artifacts.DIR_MODE, artifacts.FILE_MODE}
    link = tmp_path / "link-to-outside"
    os.symlink(outside, link)
    with pytest.raises(
        ValueError, match=r"link-to-outside is a symbolic link .*Replace the link by a folder"
    ):
        artifacts.restrict_permissions(str(link))
    assert _modes(outside) == before


def test_files_outside_the_store_are_owner_only_and_go_with_the_model(
    db, tiny_model_dir, tmp_path, monkeypatch
):
    """The output folder, the tokenized cache and exports follow the store's rule (weights and
    tokens memorise rows); deleting the model removes the cache entries only it used."""
    from superduper_transformers import data_cache, delete_model
    from superduper_transformers.export import export_model

    cache = tmp_path / "cache"
    monkeypatch.setenv(data_cache.CACHE_ENV, str(cache))
    out, exported = tmp_path / "out", tmp_path / "exported"
    umask = os.umask(0o022)  # what most machines have: everything readable by all
    try:
        llm = fixtures.make_llm(
            db, tiny_model_dir, max_steps=2, save_steps=2, eval_steps=2, output_dir=str(out)
        )
        db.apply(llm, force=True)
        export_model(db, "tiny", str(exported))
    finally:
        os.umask(umask)
    for folder in (out, cache, exported):
        assert os.stat(folder).st_mode & 0o777 == artifacts.DIR_MODE, folder
    entries = data_cache.entries()
    assert len(entries) == 2  # the training rows and the validation rows
    for path, mode in [*_modes(exported).items(), *(m for e in entries for m in _modes(e.path).items())]:
        expected = artifacts.DIR_MODE if os.path.isdir(path) else artifacts.FILE_MODE
        assert mode == expected, f"{path}: {oct(mode)}"

    shared = entries[0].path  # as if another model had trained on the same rows
    open(os.path.join(shared, data_cache.OWNER_PREFIX + "another-model"), "w").close()
    removed = delete_model(db, "tiny")
    assert removed["cached_datasets"] == 1
    assert [e.path for e in data_cache.entries()] == [shared]

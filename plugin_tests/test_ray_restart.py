"""A Ray worker dies mid-run; Ray restarts it and training resumes from the db's checkpoint.

Its own file (apart from test_ray.py) so that the two test processes of `make test` share
the Ray trainings between them.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from transformers import TrainerCallback

from plugin_tests import fixtures
from plugin_tests.test_ray import ray_configs, ray_tmp  # noqa: F401 (ray_tmp: a fixture)
from superduper_transformers.checkpoint import list_checkpoints


# -- 3. a worker dies; Ray restarts it; training resumes from the checkpoint ---
class KillOnce(TrainerCallback):
    """Kill rank 0 (SIGKILL, as a lost machine) once, right after the db registered ``step``.

    It runs after the db's callback and before Ray's report, so the db is one
    checkpoint ahead of Ray when the worker dies.
    """

    def __init__(self, marker: str, step: int, settle_step: int):
        self.marker, self.step, self.settle_step = marker, step, settle_step

    def _armed(self, state, step):
        return state.is_world_process_zero and state.global_step == step and not os.path.exists(self.marker)

    def on_step_end(self, args, state, control, **kwargs):
        if self._armed(state, self.settle_step):
            # Ray's controller collects reports every 2 s: wait until it holds the
            # previous checkpoint, or the death races it and the run restarts from 0.
            import ray.train

            ray.train.get_all_reported_checkpoints(timeout_s=120)

    def on_save(self, args, state, control, **kwargs):
        if self._armed(state, self.step):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


class StepLog(TrainerCallback):
    """Append ``begin`` at each (re)start and every finished step to a file (rank 0)."""

    def __init__(self, path: str):
        self.path = path

    def _write(self, line):
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._write(f"begin\nfrom {state.global_step}")  # the step it resumed from

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._write(str(state.global_step))


def tokenized_facts(model_dir):
    from superduper_transformers.hf.data import build_dataset
    from superduper_transformers.hf.loading import load_tokenizer

    tokenizer = load_tokenizer({"pretrained_model_name_or_path": model_dir})
    rows = [{"x": x, "y": y} for x, y in fixtures.FACTS]
    return build_dataset(tokenizer, rows, "x", "y", max_length=64)


def test_dead_worker_is_restarted_and_resumes_from_the_latest_checkpoint(
    sqlite_db,
    tiny_model_dir,
    tmp_path,
    ray_tmp,  # noqa: F811
):
    import ray.cloudpickle
    from ray.train import FailureConfig, RunConfig

    from superduper_transformers import LLM, LLMTrainer
    from superduper_transformers.trainer_args import build_sft_config
    from superduper_transformers.training import train

    db = sqlite_db
    llm = LLM("tiny", model_name_or_path=tiny_model_dir)
    db.apply(llm, force=True)
    settings = dict(fixtures.FAST_TRAINING, max_steps=12, save_steps=4, logging_steps=2)
    trainer = LLMTrainer("t", key=("x", "y"), select=None, lora_r=16, lora_alpha=32, **settings)
    args = build_sft_config(trainer, output_dir=str(tmp_path / "out"), has_eval=False)
    steps_file, marker = str(tmp_path / "steps.log"), str(tmp_path / "killed")
    run_config = RunConfig(
        name="crash",
        storage_path=str(tmp_path / "ray_results"),
        failure_config=FailureConfig(max_failures=1),
    )

    # pytest imports this file as `test_ray`, which workers cannot import: send the
    # callbacks' classes by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    result = train(
        args,
        tokenized_facts(tiny_model_dir),
        None,
        llm.model_load_kwargs(),
        llm.tokenizer_load_kwargs(),
        db=db,
        llm=llm,
        ray_configs=ray_configs(ray_tmp, run_config=run_config),
        config=trainer,
        experiment_id="run1",
        callbacks=[KillOnce(marker, step=8, settle_step=6), StepLog(steps_file)],
    )

    assert os.path.exists(marker)  # the worker did die
    runs = open(steps_file).read().split("begin\n")[1:]
    starts = [int(run.split()[1]) for run in runs]
    first, second = ([int(s) for s in run.split()[2:]] for run in runs)
    assert starts == [0, 8]  # the restarted trainer began at the db's step 8
    assert first == list(range(1, 9))
    # Ray's latest checkpoint was step 4 (8 died before Ray saw it), the db's was 8:
    # the db is the truth, no step is trained twice.
    assert second == list(range(9, 13))
    assert result.metrics["step"] == 12
    # The db: one row per save, in step order, once each; step 8 (registered before the
    # death, saved again after the restart) was not registered twice.
    rows = list_checkpoints(db, "tiny", "run1")
    assert [r["step"] for r in rows] == [4, 8, 12]
    for r in rows:
        assert db.show("Checkpoint", r["identifier"]) == [0]
        with open(os.path.join(db.load("Checkpoint", r["identifier"]).local_path, "trainer_state.json")) as f:
            assert json.load(f)["global_step"] == r["step"]
    assert db.load("LLM", "tiny").adapter_id.step == 12

"""``LLM``: a superduper model over ``AutoModelForCausalLM``, with its adapter in the db."""

from __future__ import annotations

import contextlib
import dataclasses as dc
import os
import typing as t

from superduper import logging
from superduper.base.annotations import trigger
from superduper.components.model import Model

from superduper_transformers import resume
from superduper_transformers.checkpoint import Checkpoint, CheckpointError
from superduper_transformers.hf import loaded, loading
from superduper_transformers.hf.data import build_prompt, chat_reply, is_conversation
from superduper_transformers.store.versions import breaking_uuid

DEFAULT_PREDICT_KWARGS = {"max_new_tokens": 64, "do_sample": False}


class LLM(Model):
    """A causal LM that can be fine-tuned on rows of the datalayer and predict text.

    :param model_name_or_path: Folder (or offline-cached hub id) of the base model.
    :param adapter_id: The trained weights to use: a ``Checkpoint`` in the db or a path
        to a checkpoint folder (it is stored in the artifact store when applied).
    :param model_kwargs: Extra keyword arguments for ``AutoModelForCausalLM.from_pretrained``.
    :param tokenizer_kwargs: Extra keyword arguments for ``AutoTokenizer.from_pretrained``.
    :param prompt_template: Template with ``{input}`` applied to each prompt, in
        training and at prediction time.
    :param predict_kwargs: Keyword arguments for ``generate`` (``max_new_tokens``, ...).
    :param max_batch_size: Prompts per ``generate`` call in :meth:`predict_batches` (a
        ``Listener`` hands over every new row at once).
    :param alias: Follow this alias (e.g. ``"prod"``): before each batch the model looks up
        the checkpoint the alias points at and loads it when the alias moved.
    :param alias_model: The model whose alias ``alias`` is (default: this one).
    :param record_checkpoint: Predict ``{"answer": text, "checkpoint": identifier}``
        instead of text, so that the outputs a ``Listener`` stores name their checkpoint.
    """

    model_name_or_path: t.Optional[str] = None
    adapter_id: t.Optional[Checkpoint] = None
    model_kwargs: t.Dict = dc.field(default_factory=dict)
    tokenizer_kwargs: t.Dict = dc.field(default_factory=dict)
    prompt_template: str = "{input}"
    max_batch_size: int = 8
    alias: t.Optional[str] = None
    alias_model: t.Optional[str] = None
    record_checkpoint: bool = False

    @property
    def signature(self) -> str:
        """One input per prediction (superduper reads ``**generate_kwargs`` as more inputs),
        as superduper's own LLMs declare: ``Listener(model=llm, key="question")`` works."""
        return "singleton"

    @property
    def uuid(self) -> str:
        """superduper's version key, hashing only the ``breaks`` fields (the same value,
        cheaper: a ``Listener`` reads it once per output row)."""
        return breaking_uuid(self)

    def postinit(self):
        """Validate the fields and wrap an adapter path into a ``Checkpoint``."""
        if self.datatype is None:  # superduper would read `predict`'s annotation (Any: a blob)
            self.datatype = "json" if self.record_checkpoint else "str"
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ValueError(
                f"LLM `{self.identifier}`: `max_batch_size`={self.max_batch_size!r} must be a "
                "positive integer (prompts per `generate` call)."
            )
        if not self.model_name_or_path:
            raise ValueError(
                f"LLM `{self.identifier}`: `model_name_or_path` is required: the folder of a "
                "Hugging Face causal LM (with config.json) or an offline-cached hub id."
            )
        if isinstance(self.adapter_id, (str, os.PathLike)):
            path = os.fspath(self.adapter_id)
            if not os.path.isdir(path):
                raise ValueError(
                    f"LLM `{self.identifier}`: `adapter_id`={path!r} is not a folder. Give a "
                    "Checkpoint or the folder of a saved adapter/checkpoint."
                )
            from superduper_transformers.checkpoint import file_manifest

            self.adapter_id = Checkpoint(
                f"{self.identifier}-adapter-{os.path.basename(os.path.abspath(path))}",
                path=os.path.abspath(path),
                model=self.identifier,
                manifest=file_manifest(path),
            )
        from superduper_transformers.settings import secret_issues

        secrets = secret_issues(self.model_kwargs, "model_kwargs") + secret_issues(
            self.tokenizer_kwargs, "tokenizer_kwargs"
        )
        if secrets:
            raise ValueError(f"LLM `{self.identifier}`: " + " ".join(secrets))
        self.refuse_pickled_children()  # children built here; those of a stored row: in `setup`
        try:
            (self.prompt_template or "{input}").format(input="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"LLM `{self.identifier}`: `prompt_template`={self.prompt_template!r} cannot be "
                f"filled with only `{{input}}` ({type(e).__name__}: {e}). Use `{{input}}` as the "
                "only placeholder and write literal braces as `{{` and `}}`."
            ) from e
        if "{input}" not in (self.prompt_template or "{input}"):
            raise ValueError(
                f"LLM `{self.identifier}`: `prompt_template`={self.prompt_template!r} has no "
                "`{input}` placeholder."
            )
        super().postinit()
        self._pipeline = None

    # -- the in-use pointer ------------------------------------------------
    def dict(self, metadata: bool = True):
        """The component as superduper stores it, keeping the stored ``adapter_id``
        when this object sets none (:meth:`keep_stored_pointer`).

        :param metadata: As for superduper's ``Component.dict``.
        """
        self.keep_stored_pointer()
        return super().dict(metadata=metadata)

    def keep_stored_pointer(self) -> None:
        """Take the stored row's ``adapter_id`` when this object (being applied) has none.

        A freshly built ``LLM`` (a new ``predict_kwargs``, a changed config, a resume from
        the command line) has ``adapter_id=None``; written as is, the apply would unpoint the
        model: serving processes and listeners would get the base model without a warning.
        superduper serialises the component (``dict``) before it plans the apply
        (``create_jobs``), so this runs in ``dict``. A caller that means to clear the pointer
        says so with :func:`superduper_transformers.promote.clear_pointer`.
        """
        from superduper_transformers import promote

        if self.adapter_id is not None or self.db is None or resume.in_training(self):
            return
        if promote.clears_pointer(self):
            return
        stored = promote.stored_pointer(self.db, self.identifier)  # None for a new model
        if stored is None:
            return
        from superduper_transformers.checkpoint import checkpoint_without_files, load_checkpoint

        try:  # its files are checked where they are loaded, not here
            self.adapter_id = load_checkpoint(self.db, stored, verify=False)
        except CheckpointError:  # its folder is gone: the row still keeps the pointer
            self.adapter_id = checkpoint_without_files(self.db, stored)
        logging.info(f"LLM `{self.identifier}`: `adapter_id` not set: kept the stored one ({stored})")

    def _record_pointer_change(self) -> None:
        """Record in the model's promotion history an apply that moves its in-use pointer."""
        from superduper_transformers import promote

        if promote.recorded_by_caller(self):
            return  # a promotion or rollback records its own move
        after = self.checkpoint_id()
        before = promote.stored_pointer(self.db, self.identifier)
        if after != before:
            promote.record_move(self.db, self.identifier, before, after, promote.APPLY)

    # -- loading ----------------------------------------------------------
    def setup(self):
        """Resolve child components; the weights load lazily on the first prediction.

        superduper calls ``setup`` on every save of the model (it reloads the stored
        copy to diff it), so loading weights here would cost a model load per checkpoint.
        It also calls it before every job of a ``Listener`` (each insert): weights
        already loaded are kept (:meth:`_get_pipeline` reloads only when they changed).
        """
        self._adapter_error = None
        self._drop_pickled_children()  # before superduper's `setup` unpickles every child's blobs
        try:
            super().setup()
        except FileNotFoundError as e:
            # superduper resolves the adapter's files while decoding it: a deleted
            # artifact surfaces as a bare FileNotFoundError from the artifact store.
            # The error is kept for the first load of the weights, not raised here:
            # superduper sets up a model to tear it down or to diff it on save, and
            # neither needs the files (a lost folder must not make the model undeletable).
            self._adapter_error = self._missing_adapter_error(e)
            self._missing_adapter = self.adapter_id  # a new adapter_id clears the error
            if getattr(self.adapter_id, "object", False) is None:
                # Resolve the reference from the row alone, so that superduper can hash
                # (diff) this copy without the files.
                from superduper_transformers.checkpoint import checkpoint_without_files

                self.adapter_id.object = checkpoint_without_files(self.db, self.adapter_id.identifier)
            logging.warn(str(self._adapter_error))
        if self.trainer is not None:
            resume.show_interrupted_run(self)
        return self

    def refuse_pickled_children(self, db=None) -> None:
        """Raise when a child component (``validation``'s metrics and datasets, ``upstream``)
        has a field that superduper would store as a pickled blob in the artifact store.

        superduper unpickles every child's blobs when it sets a model up (every apply, job,
        save and load): whoever can write the blob file (superduper makes them 0o777) would
        run code in each process that loads the model.

        :param db: Read children that are not loaded yet from this datalayer (their rows
            only: nothing is unpickled).
        :raises PickledFieldError: naming each such field and the fix.
        """
        from superduper_transformers.store import pickled

        found = [d for descriptions in pickled.pickled_fields(self, db).values() for d in descriptions]
        if found:
            raise pickled.refusal(f"LLM `{self.identifier}`", found)

    def _drop_pickled_children(self) -> None:
        """Leave out, unread, the children of a stored model that hold pickled blobs.

        A database written before :meth:`refuse_pickled_children` may hold such a child.
        It is not unpickled: the field is set to None in this copy, with a warning. Raising
        instead would make the model impossible to re-apply or delete, since superduper
        sets up the stored copy to diff it and to tear it down.
        """
        from superduper_transformers.store import pickled

        for field, found in pickled.pickled_fields(self, self.db).items():
            setattr(self, field, None)
            logging.warn(pickled.left_out(f"LLM `{self.identifier}`", field, found))

    def check_metrics(self) -> None:
        """Import every ``ImportedMetric`` of ``validation`` (before the apply writes anything).

        :raises MetricError: naming the metric that cannot be imported.
        """
        from superduper.base.datatype import ComponentRef

        from superduper_transformers.metric import ImportedMetric

        validation = self.validation
        if isinstance(validation, ComponentRef):
            validation = validation.object  # None: a stored reference not loaded, checked when used
        for metric in getattr(validation, "metrics", None) or []:
            if isinstance(metric, ComponentRef):
                metric = metric.object
            if isinstance(metric, ImportedMetric):
                metric.load()

    def _missing_adapter_error(self, e: FileNotFoundError) -> CheckpointError:
        identifier = getattr(self.adapter_id, "identifier", self.adapter_id)
        error = CheckpointError(
            f"Checkpoint `{identifier}`: its files are missing from the artifact store "
            f"({e.filename}). The artifact store must be the one the checkpoint was "
            "written to (CFG.artifact_store / SUPERDUPER_ARTIFACT_STORE); otherwise set "
            f"the LLM `{self.identifier}`'s `adapter_id` to another checkpoint."
        )
        error.__cause__ = e
        return error

    def model_load_kwargs(self) -> t.Dict[str, t.Any]:
        """Keyword arguments for loading the base model."""
        return {"pretrained_model_name_or_path": self.model_name_or_path, **self.model_kwargs}

    def tokenizer_load_kwargs(self) -> t.Dict[str, t.Any]:
        """Keyword arguments for loading the tokenizer."""
        return {"pretrained_model_name_or_path": self.model_name_or_path, **self.tokenizer_kwargs}

    def _adapter_checkpoint(self) -> t.Optional[Checkpoint]:
        """The ``Checkpoint`` the model uses, resolved (None without one)."""
        error = getattr(self, "_adapter_error", None)
        if error is not None and self.adapter_id is getattr(self, "_missing_adapter", None):
            raise error
        adapter = self.adapter_id
        if adapter is not None and not isinstance(adapter, Checkpoint) and hasattr(adapter, "unpack"):
            try:  # a reference not yet resolved
                adapter = adapter.unpack()
            except FileNotFoundError as e:
                raise self._missing_adapter_error(e) from e
        return adapter

    def adapter_path(self) -> t.Optional[str]:
        """Local folder of the adapter/checkpoint in the artifact store, verified against
        its manifest. To load from it, use :meth:`verified_adapter`."""
        adapter = self._adapter_checkpoint()
        return adapter.local_path if adapter is not None else None

    @contextlib.contextmanager
    def verified_adapter(self) -> t.Iterator[t.Optional[str]]:
        """A private copy of the adapter/checkpoint folder, verified against its manifest,
        for the ``with`` block (None without an adapter). Loading from the copy, not from
        the store, means the bytes checked are the bytes loaded
        (:meth:`Checkpoint.verified_copy`)."""
        adapter = self._adapter_checkpoint()
        if adapter is None:
            yield None
            return
        with adapter.verified_copy() as path:
            yield path

    def _load(self):
        """Base model + adapter (or full fine-tuned weights) and tokenizer, in eval mode."""
        loading.check_model_path(self.model_name_or_path)
        with self.verified_adapter() as path:
            model, tokenizer = self._load_from(path)
        adapter = getattr(self.adapter_id, "identifier", None)
        logging.info(f"LLM {self.identifier}: loaded {self.model_name_or_path} + {adapter}")
        return model, tokenizer

    def _load_from(self, path: t.Optional[str]):
        tokenizer_kwargs = self.tokenizer_load_kwargs()
        model_kwargs = self.model_load_kwargs()
        if path and loading.has_tokenizer(path):
            tokenizer_kwargs["pretrained_model_name_or_path"] = path
        if path and not loading.is_adapter_dir(path):
            model_kwargs["pretrained_model_name_or_path"] = path  # full fine-tune
        tokenizer = loading.load_tokenizer(tokenizer_kwargs)
        bits = getattr(self.trainer, "bits", None)
        if bits is not None and path and loading.is_adapter_dir(path):
            # A QLoRA adapter was trained against the quantized base: predict with the same.
            from superduper_transformers.hf.quantization import (
                create_quantization_config,
                device_map_for_quantized,
            )

            model_kwargs.setdefault("quantization_config", create_quantization_config(self.trainer))
            model_kwargs.setdefault("device_map", device_map_for_quantized())
        model = loading.load_causal_lm(model_kwargs)
        if "device_map" not in model_kwargs:
            model = model.to(loading.default_device())
        if path and loading.is_adapter_dir(path):
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path)
        model.eval()
        return model, tokenizer

    def precision(self):
        """The precision of prediction: the trainer's explicit ``bf16``/``fp16``, else the
        one training chooses on this hardware (bf16 where native, else fp32 on the CPU)."""
        from superduper_transformers.settings import resolve_precision

        tk = getattr(self.trainer, "training_kwargs", None) or {}
        return resolve_precision(loading.default_device(), tk.get("bf16"), tk.get("fp16"))

    def _get_pipeline(self):
        adapter = self._adapter_checkpoint()  # raises when its files went missing
        key = self._weights_key(adapter)
        if self._pipeline is None or getattr(self, "_pipeline_key", None) != key:
            self._pipeline = None  # free the old weights before loading the new ones
            self._pipeline = loaded.get_or_load(key, self._load)
            self._pipeline_key = key
        return self._pipeline

    def _weights_key(self, adapter: t.Optional[Checkpoint]) -> t.Tuple:
        """What the loaded weights depend on: copies of the model with the same key share
        them (:mod:`~superduper_transformers.hf.loaded`); a changed key loads them again."""
        return (
            self.model_name_or_path,
            repr(sorted((self.model_kwargs or {}).items())),
            repr(sorted((self.tokenizer_kwargs or {}).items())),
            getattr(self.trainer, "bits", None),
            self.precision().name if getattr(self.trainer, "bits", None) else None,
            None if adapter is None else (adapter.identifier, adapter.uuid),
        )

    # -- prediction -------------------------------------------------------
    def predict(
        self,
        prompt: t.Union[str, t.List[t.Dict]],
        tools: t.Optional[t.List[t.Dict]] = None,
        **generate_kwargs,
    ) -> t.Any:
        """Generate the continuation of one prompt (the new text only).

        :param prompt: The input text; ``prompt_template`` is applied to it. Or a
            conversation (``[{"role": "user", "content": ...}, ...]``): it is rendered with
            the chat template and the assistant's reply is returned.
        :param tools: Function schemas the conversation may call, rendered by the chat
            template as in training on rows with a tools column; the reply is the
            assistant's turn as the template writes it (a tool call included).
        :param generate_kwargs: Generation settings for this call (``max_new_tokens``,
            ``do_sample``, ``num_beams``, ...); they win over ``predict_kwargs``.
        :return: The text, or ``{"answer", "checkpoint"}`` with ``record_checkpoint``.
        """
        return self.predict_batches([prompt], tools=tools, **generate_kwargs)[0]

    def generate_kwargs(self, **overrides) -> t.Dict[str, t.Any]:
        """Keyword arguments for ``generate``: the defaults, then ``predict_kwargs``, then ``overrides``.

        :param overrides: Generation settings of one call.
        """
        return {**DEFAULT_PREDICT_KWARGS, **(self.predict_kwargs or {}), **overrides}

    def predict_batches(
        self,
        prompts: t.Sequence[t.Union[str, t.List[t.Dict]]],
        tools: t.Optional[t.List[t.Dict]] = None,
        **generate_kwargs,
    ) -> t.List[t.Any]:
        """Generate continuations for several prompts, ``max_batch_size`` per ``generate`` call.

        With ``alias`` set, the checkpoint the alias points at is looked up first (and
        loaded when it moved), so a ``Listener`` answers with the promoted checkpoint.

        :param prompts: Input texts, or conversations (lists of messages; see :meth:`predict`).
        :param tools: Function schemas every conversation may call (see :meth:`predict`).
        :param generate_kwargs: Generation settings for this call (``max_new_tokens``,
            ``do_sample``, ``num_beams``, ...); they win over ``predict_kwargs``.
        :return: Texts, or ``{"answer", "checkpoint"}`` dicts with ``record_checkpoint``.
        """
        self.follow_alias()
        pipeline, precision = self._get_pipeline(), self.precision()  # once per call, not per batch
        size = self.max_batch_size
        texts = []
        for start in range(0, len(prompts), size):
            texts += self._generate(
                pipeline, precision, prompts[start : start + size], tools, **generate_kwargs
            )
        if not self.record_checkpoint:
            return texts
        checkpoint = self.checkpoint_id()
        return [{"answer": text, "checkpoint": checkpoint} for text in texts]

    def answers(self, prompts: t.Sequence[t.Any], **generate_kwargs) -> t.List[str]:
        """The texts of :meth:`predict_batches`, also with ``record_checkpoint``.

        :param prompts: As for :meth:`predict_batches`.
        :param generate_kwargs: As for :meth:`predict_batches`.
        """
        out = self.predict_batches(prompts, **generate_kwargs)
        return [o["answer"] if isinstance(o, dict) else o for o in out]

    def checkpoint_id(self) -> t.Optional[str]:
        """Identifier of the checkpoint this model predicts with (None: the base model)."""
        return getattr(self.adapter_id, "identifier", None)

    def follow_alias(self) -> None:
        """Use the checkpoint ``alias`` points at now; drop the loaded weights if it moved."""
        if not self.alias:
            return
        from superduper_transformers import promote
        from superduper_transformers.checkpoint import load_checkpoint

        model = self.alias_model or self.identifier
        if self.db is None:
            raise ValueError(
                f"LLM `{self.identifier}`: `alias`={self.alias!r} is looked up in the datalayer: "
                "apply the model (or a Listener of it) first, or set `llm.db`."
            )
        target = promote.promotions(self.db, model).aliases.get(self.alias)
        if target is None:
            raise promote.PromotionError(
                f"LLM `{self.identifier}`: `alias`={self.alias!r} is not an alias of model "
                f"`{model}`. Set it with `promote(db, {model!r}, CHECKPOINT, alias={self.alias!r})`."
            )
        if target != self.checkpoint_id():
            self.adapter_id = load_checkpoint(self.db, target)
            self._adapter_error = None
            self._pipeline = None

    def _generate(self, pipeline, precision, prompts, tools=None, **generate_kwargs) -> t.List[str]:
        """One left-padded ``generate`` call over ``prompts`` (conversations given ``tools``)."""
        import torch

        model, tokenizer = pipeline
        chat = bool(getattr(self.trainer, "setup_chat_format", False))
        texts = [build_prompt(tokenizer, p, self.prompt_template, chat, tools) for p in prompts]
        tokenizer.padding_side = "left"
        # A chat template writes its own special tokens: a conversation gets none added.
        special = [not (chat or is_conversation(p)) for p in prompts]
        if len(set(special)) <= 1:
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=all(special))
        else:  # text and conversations in one batch: each encoded as it was trained
            encoded = [tokenizer(x, add_special_tokens=s)["input_ids"] for x, s in zip(texts, special)]
            batch = tokenizer.pad({"input_ids": encoded}, return_tensors="pt", padding=True)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        kwargs = self.generate_kwargs(**generate_kwargs)
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        autocast = torch.autocast(
            model.device.type, dtype=precision.torch_dtype, enabled=precision.name != "fp32"
        )
        try:
            with torch.no_grad(), autocast:
                out = model.generate(**batch, **kwargs)
        except ValueError as e:
            raise self._generate_error(e, kwargs, generate_kwargs) from e
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        replies = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [chat_reply(tokenizer, r) if is_conversation(p) else r for p, r in zip(prompts, replies)]

    def _generate_error(self, e: ValueError, kwargs: t.Dict, call_kwargs: t.Dict) -> ValueError:
        """Name the generation keyword(s) ``generate`` refused, where they came from, and the fix.

        transformers reports an unknown keyword as a ``model_kwargs`` "not used by the
        model", which reads like a problem of ``model_kwargs`` (the loading settings).
        """
        message = str(e)
        unknown = [k for k in kwargs if f"'{k}'" in message and "not used by the model" in message]
        if not unknown:
            return ValueError(
                f"LLM `{self.identifier}`: `generate` refused the generation settings {kwargs!r}: {message}"
            )
        where = ", ".join(
            f"`{k}`={kwargs[k]!r} (from {'this call' if k in call_kwargs else '`predict_kwargs`'})"
            for k in unknown
        )
        return ValueError(
            f"LLM `{self.identifier}`: unknown generation keyword(s) {where}: `generate` does not "
            "know them. Use keywords of transformers' `GenerationConfig` (e.g. `max_new_tokens`, "
            "`do_sample`, `num_beams`, `temperature`, `top_p`) and check the spelling."
        )

    # -- training hooks ---------------------------------------------------
    def create_jobs(self, context, event_type, ids=None, jobs=(), requires=None):
        """Check settings and training rows *before* the apply writes anything.

        superduper plans an apply (this method) before it executes the plan, so an
        error raised here leaves the database as it was.
        """
        if resume.in_training(self):
            # A save of the model this process is training (a checkpoint, the pointer, the
            # run's marker): bookkeeping, not an apply to plan again (planning builds a trl
            # config, which resets accelerate's state under the running trainer).
            return super().create_jobs(
                context=context, event_type=event_type, ids=ids, jobs=jobs, requires=requires
            )
        from superduper_transformers.trainer import migrate_tables, preflight

        self.refuse_pickled_children(self.db)
        self.check_metrics()

        # First: a database written by an older version lacks columns (e.g.
        # `TrainingRun.data_fingerprint`) that the reads and writes below need.
        migrate_tables(self.db, LLM)
        if requires and self.trainer is not None and resume.is_interrupted(self.db, self.identifier):
            requires = None  # re-applying a model whose training was cut off trains it again
        elif requires and _trains_anew(self):
            # A new training of a trained model (e.g. DPO after SFT): superduper sees no
            # change of a trainer that keeps its identifier, and would not fit.
            requires = None
        plan = None
        if "fit_in_db" in self.get_triggers(event_type, requires=requires) and self.trainer is not None:
            plan = preflight(self, self.db)
            if self.identifier not in self.db.show("LLM"):  # new, or deleted and re-created
                resume.abandon_runs_of_a_deleted_model(self.db, self.identifier)
        self._record_pointer_change()  # after every check: a refused apply records nothing
        out = super().create_jobs(
            context=context, event_type=event_type, ids=ids, jobs=jobs, requires=requires
        )
        if plan is not None:
            # The plan travels with the fit job (JSON in its row; the built plan in this process).
            for job in out:
                if job.method == "fit_in_db" and job.uuid == self.uuid:
                    job.kwargs["plan"] = plan.to_json()
        return out

    @trigger("apply", requires="trainer")
    def fit_in_db(self, plan: t.Optional[t.Dict] = None):
        """Train with the trainer, as the preflight of this apply planned it.

        :param plan: The plan (:mod:`superduper_transformers.plan`), handed over by
            :meth:`create_jobs` in the fit job's keywords; None (another trainer, or a
            job from before plans) falls back to superduper's own path.
        """
        from superduper_transformers.plan import from_job
        from superduper_transformers.trainer import LLMTrainer

        built = from_job(plan, self, self.db) if isinstance(self.trainer, LLMTrainer) else None
        if built is None:
            return super().fit_in_db()
        return self.trainer.fit(self, self.db, None, None, plan=built)

    def validate(self, key, dataset, metrics) -> t.Dict[str, t.Any]:
        """Generate an answer for every row of ``dataset`` and score it with each ``Metric``.

        superduper's ``Model.validate`` maps rows by the signature it infers from
        ``predict``, which reads ``**generate_kwargs`` as more positional inputs: each
        prompt would arrive as a list. Here a prompt is one value, as ``predict`` takes it.

        :param key: The ``Validation``'s key: ``(input column, target column)``, or one
            column for both.
        :param dataset: A superduper ``Dataset``.
        :param metrics: superduper ``Metric``s, called as ``metric(predictions, targets)``
            with the generations stripped of surrounding whitespace.
        """
        X, y = (key, key) if isinstance(key, str) else (key[0], key[-1])
        rows = list(dataset.data)
        predictions = [p.strip() for p in self.answers([r[X] for r in rows])]
        targets = [r[y] for r in rows]
        return {m.identifier: m(predictions, targets) for m in metrics}

    def _create_datasets(self, X, db, select):
        """The training and validation rows for ``fit``, read in pages (never as lists).

        superduper's ``Model.fit_in_db`` gathers every selected row into Python lists
        here and hands them to ``fit``; it has no other hook for the data. An
        ``LLMTrainer`` reads the pages itself (``store.rows.FoldRows``), so a table
        larger than memory trains. Other trainers get superduper's lists.
        """
        from superduper_transformers.trainer import LLMTrainer, fold_rows

        if not isinstance(self.trainer, LLMTrainer):
            return super()._create_datasets(X, db, select)
        return tuple(fold_rows(self.trainer, db, fold) for fold in ("train", "valid"))

    @trigger("apply", depends="fit_in_db", requires="validation")
    def validate_in_db(self):
        """Run the validation metrics of ``validation`` (if any) and store them.

        Eval losses of every validation dataset are recorded during training already;
        this runs user-defined ``Metric`` components on generated text. ``fit`` does it
        after training (``evaluation.validate_after_training``); a result stored there
        is not computed again.
        """
        if self.validation is None or not self.validation.metrics:
            return
        done = set(self.metric_values or {})
        for dataset in self.validation.datasets:
            if f"{dataset.identifier}/{dataset.version}" in done:
                continue
            results = self.validate(key=self.validation.key, dataset=dataset, metrics=self.validation.metrics)
            self.metric_values[f"{dataset.identifier}/{dataset.version}"] = results
        self.save()


def _trains_anew(model: LLM) -> bool:
    """Whether the trainer of ``model`` (being applied over a stored, trained model) would
    train with other settings than the model's latest run: another objective, learning
    rate, rows... (bookkeeping such as ``max_steps`` or ``save_steps`` does not count)."""
    from superduper_transformers.trainer import LLMTrainer, run_settings

    if not isinstance(model.trainer, LLMTrainer):
        return False
    run = resume.latest_run(model.db, model.identifier)
    # The start is not compared: it is the checkpoint in use, which each training moves.
    settings = run_settings(model, model.trainer)
    return run is not None and bool(resume.changed_settings(run, settings, ignore=["start_from"]))

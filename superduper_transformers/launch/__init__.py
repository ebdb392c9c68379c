"""Launchers: run a :class:`~superduper_transformers.hf.job.TrainJob` on this process or
on Ray Train, and ``LLMCallback``, which records the run in the db. Uses ``hf`` and the
store (``checkpoint``, ``store``); never imports a component module."""

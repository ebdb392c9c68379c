"""Silence three harmless import-time messages of dependencies, each matched exactly.

A command should print its own output and errors only. These three appear on every run
and ask nothing of the user:

- superduper warns when its secrets folder is missing, and it is missing unless secrets
  are mounted there. Only the default folder's warning is dropped: a folder the user
  configured and got wrong still warns.
- bitsandbytes, on CPUs with AVX-512-BF16, tries at import to fetch an optional 4-bit CPU
  kernel from the Hugging Face hub and logs that it failed (offline, or no ``kernels``), then
  uses its own kernel. The ``kernels`` package logs that it skipped a trust check for that
  same fetch. Other records of these loggers pass.

Installed when the package is imported (``__init__``), before superduper and peft are.
Imports nothing from the package.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

#: superduper 0.10's default ``CFG.secrets_volume``.
SUPERDUPER_DEFAULT_SECRETS = "~/.superduper/secrets"

#: logger name -> the start of the one message dropped from it.
DROPPED_LOG_RECORDS = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
}


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def install() -> None:
    """Add the filters (idempotent: a filter equal to one already there is not added twice)."""
    secrets = os.path.expanduser(SUPERDUPER_DEFAULT_SECRETS)
    warnings.filterwarnings(
        "ignore",
        message=re.escape(f"Warning: The path '{secrets}' is not a valid directory."),
        category=UserWarning,
    )
    for name, prefix in DROPPED_LOG_RECORDS.items():
        logger = logging.getLogger(name)  # the logger the library gets when it is imported later
        if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))


install()

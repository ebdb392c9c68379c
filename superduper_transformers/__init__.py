"""superduper_transformers: fine-tune causal LMs on data in a superduper datalayer."""

# First: filters dependencies' import-time noise before superduper and peft are imported.
from superduper_transformers import _quiet  # noqa: F401
from superduper_transformers.checkpoint import Checkpoint
from superduper_transformers.listener import LLMListener
from superduper_transformers.metric import ImportedMetric
from superduper_transformers.model import LLM
from superduper_transformers.promote import load_model, resolve_alias
from superduper_transformers.resume import delete_model
from superduper_transformers.trainer import LLMTrainer

__version__ = "0.11.0"

__all__ = [
    "Checkpoint",
    "ImportedMetric",
    "LLM",
    "LLMListener",
    "LLMTrainer",
    "delete_model",
    "load_model",
    "resolve_alias",
]

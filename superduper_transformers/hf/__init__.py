"""transformers / trl / peft / bitsandbytes: loading, tokenizing, LoRA, quantization and
one training on one process. Knows nothing of the datalayer or the components: it takes plain settings
(:mod:`superduper_transformers.settings`) and Hugging Face objects."""

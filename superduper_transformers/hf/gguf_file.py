"""Write a Hugging Face causal LM and its tokenizer as one GGUF file, as llama.cpp's converter does.

The file is written with the ``gguf`` package (llama.cpp's own writer, tensor names and
quantization), following ``convert_hf_to_gguf.py`` for the architectures listed in
:data:`ARCHITECTURES`:

- hyperparameters under ``<arch>.*`` keys; ``output.weight`` left out when the embeddings
  are tied (llama.cpp then reuses ``token_embd.weight``);
- Llama's ``q_proj``/``k_proj`` rows permuted (``LlamaModel.permute``): llama.cpp's rotary
  embedding pairs neighbouring dimensions where transformers pairs the two halves; Qwen2
  uses the halves (NeoX style) in llama.cpp too, so its weights are written as they are;
- 1-D tensors (norms, biases) in f32, the matrices in the asked precision; a matrix whose
  rows do not split into q8_0 blocks of 32 falls back to f16, as in the converter;
- the tokenizer as a byte-level BPE (``tokenizer.ggml.model = "gpt2"``) with its merges, or
  a SentencePiece-style one (byte fallback: Llama 2, TinyLlama, Mistral v0.1) as llama.cpp's
  ``llama`` vocabulary with scores (:mod:`gguf_spm`); special token ids, ``add_bos``/``add_eos``
  and the chat template.

Only transformers objects, numpy and ``gguf`` here: nothing of the datalayer.
"""

from __future__ import annotations

import json
import typing as t

from superduper_transformers.hf import gguf_spm

#: Precisions a GGUF export can be written in (llama.cpp's names).
QUANTIZATIONS = ("f16", "bf16", "q8_0")
#: transformers ``model_type`` -> llama.cpp architecture (Mistral is Llama in llama.cpp).
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
#: Architectures whose q/k rows llama.cpp permutes (``LlamaModel.permute``).
_PERMUTED = {"llama"}

#: The ``Split`` regexes of byte-level tokenizers, by llama.cpp's pre-tokenizer name.
SPLITS = {
    "llama-bpe": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}
#: Byte-level pre-tokenizers recognised, by llama.cpp's name (``tokenizer.ggml.pre``).
#: llama.cpp splits text by this name, so a wrong one would silently tokenize otherwise.
PRE_TOKENIZERS = {
    "gpt-2": "ByteLevel with the GPT-2 split (GPT-2, SmolLM2 as transformers rebuilds it from GGUF)",
    "smollm": "Digits(individual) + ByteLevel (SmolLM / SmolLM2's own tokenizer.json)",
    "llama-bpe": "Split(Llama 3 regex) + ByteLevel (Llama 3)",
    "qwen2": "Split(Qwen2 regex) + ByteLevel (Qwen2, Qwen2.5)",
}


def model_type_issues(config) -> t.List[str]:
    """What stops ``config``'s model from being written as GGUF (empty when nothing does).

    :param config: A transformers ``PretrainedConfig``.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        return [
            f"architecture `{model_type}` ({', '.join(getattr(config, 'architectures', None) or [])}) "
            f"cannot be written as GGUF yet: the supported ones are {', '.join(ARCHITECTURES)}. "
            "Export it as a Hugging Face folder (format `hf`) and convert that with llama.cpp's "
            "convert_hf_to_gguf.py."
        ]
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        return [
            f"`rope_scaling` of type `{rope_type}` cannot be written as GGUF yet (only unscaled "
            "rotary embeddings): convert the exported Hugging Face folder with llama.cpp's "
            "convert_hf_to_gguf.py."
        ]
    return []


def tokenizer_issues(tokenizer) -> t.List[str]:
    """What stops ``tokenizer`` from being written as GGUF (empty when nothing does)."""
    spec = _backend_spec(tokenizer)
    if gguf_spm.is_sentencepiece(spec):
        if gguf_spm.space_prefix(spec) is None:
            return [
                f"the tokenizer is a SentencePiece-style BPE (byte fallback) with {gguf_spm.describe(spec)}: "
                "llama.cpp's `llama` vocabulary tokenizes only the Llama 2 / TinyLlama / Mistral way "
                "(`Metaspace` without splitting, or the `Prepend`+`Replace` normaliser; no Unicode "
                "normalisation). Export a Hugging Face folder (format `hf`) and convert it with "
                "llama.cpp's convert_hf_to_gguf.py."
            ]
        return []
    if spec is None or spec.get("model", {}).get("type") != "BPE":
        kind = spec.get("model", {}).get("type") if spec else type(tokenizer).__name__
        return [
            f"the tokenizer is a `{kind}` model: only BPE tokenizers, byte-level (SmolLM2, Llama 3, "
            "Qwen2, GPT-2) or SentencePiece-style with byte fallback (Llama 2, TinyLlama, Mistral), "
            "can be written as GGUF yet, not Unigram or WordPiece ones. Export a Hugging Face folder "
            "(format `hf`) and convert it with llama.cpp's convert_hf_to_gguf.py."
        ]
    if pre_tokenizer_name(spec) is None:
        return [
            f"the tokenizer's pre-tokenizer ({json.dumps(spec.get('pre_tokenizer'))[:200]}) is not one "
            f"llama.cpp names: known are {', '.join(f'{k} ({v})' for k, v in PRE_TOKENIZERS.items())}. "
            "convert_hf_to_gguf.py recognises more (by their tokenizations): convert a Hugging Face export."
        ]
    if not _merges(spec):
        return [
            "the tokenizer is a byte-level BPE without merges: llama.cpp refuses such a file "
            "(`cannot find tokenizer merges`) and the GGUF writer cannot store an empty list. Train "
            "with a tokenizer that has merges (every released byte-level BPE tokenizer has)."
        ]
    return []


def export_issues(config, tokenizer) -> t.List[str]:
    """Everything that stops this model and tokenizer from being written as GGUF, at once.

    :param config: The model's ``PretrainedConfig``.
    :param tokenizer: Its tokenizer.
    """
    issues = model_type_issues(config) + tokenizer_issues(tokenizer)
    if len(tokenizer) > getattr(config, "vocab_size", 0):
        issues.append(
            f"the tokenizer has {len(tokenizer)} tokens and the embedding {config.vocab_size} rows: "
            "resize the embedding (`resize_token_embeddings`) before training."
        )
    return issues


def pre_tokenizer_name(spec: t.Dict[str, t.Any]) -> t.Optional[str]:
    """llama.cpp's name for the pre-tokenizer of a ``tokenizer.json`` dict, or None."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    last = steps[-1] if steps else {}
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space"):
        return None
    if kinds == ["ByteLevel"] and last.get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and last.get("use_regex", True):
        return "smollm"
    if (
        kinds == ["Split", "ByteLevel"]
        and steps[0].get("behavior") == "Isolated"
        and not last.get("use_regex", True)
    ):
        regex = steps[0].get("pattern", {}).get("Regex")
        return next((name for name, split in SPLITS.items() if split == regex), None)
    return None


def write_gguf(
    model,
    tokenizer,
    path: str,
    quantization: str = "f16",
    name: t.Optional[str] = None,
    chat_template: t.Optional[str] = None,
    progress: bool = False,
) -> None:
    """Write ``model`` (weights in float32) and ``tokenizer`` to the GGUF file ``path``.

    :param model: A causal LM of one of :data:`ARCHITECTURES` (no peft wrapper).
    :param tokenizer: Its fast tokenizer (byte-level BPE, or SentencePiece-style BPE).
    :param path: The file to write.
    :param quantization: One of :data:`QUANTIZATIONS`.
    :param name: ``general.name`` (default: the config's name or path).
    :param chat_template: The Jinja chat template to store; default the tokenizer's own.
    :param progress: Draw llama.cpp's writing progress bar.
    :raises ValueError: for an unsupported model, tokenizer or quantization.
    """
    import gguf

    issues = export_issues(model.config, tokenizer)
    if quantization not in QUANTIZATIONS:
        issues.append(f"`quantization`={quantization!r} is not one of {', '.join(QUANTIZATIONS)}.")
    if issues:
        raise ValueError("Cannot write GGUF: " + " ".join(issues))
    arch = ARCHITECTURES[model.config.model_type]
    writer = gguf.GGUFWriter(path, arch)
    try:
        writer.add_name(name or getattr(model.config, "_name_or_path", "") or arch)
        writer.add_type(gguf.GGUFType.MODEL)
        _hyperparameters(writer, model.config, arch)
        ftype = {"f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}[quantization]
        writer.add_file_type(getattr(gguf.LlamaFileType, ftype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _vocabulary(writer, tokenizer, model.config.vocab_size, chat_template)
        for tensor_name, data, qtype in _tensors(model, arch, quantization):
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
    finally:
        writer.close()


def _hyperparameters(writer, config, arch: str) -> None:
    """``<arch>.*`` keys, as ``TextModel.set_gguf_parameters`` + ``LlamaModel`` write them."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)


def _backend_spec(tokenizer) -> t.Optional[t.Dict[str, t.Any]]:
    """The tokenizer's ``tokenizer.json`` as a dict (None for a slow tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def _merges(spec: t.Dict[str, t.Any]) -> t.List[str]:
    """Merges as llama.cpp stores them: ``"a b"``, a space inside a part written as U+0120
    (tokenizers >= 0.20 writes pairs as lists, which may hold spaces)."""
    merges = spec.get("model", {}).get("merges") or []
    return [
        m if isinstance(m, str) else " ".join(part.replace(" ", chr(ord(" ") + 256)) for part in m)
        for m in merges
    ]


def _special_flags(tokenizer) -> t.Tuple[bool, bool]:
    """Whether encoding adds BOS / EOS, as the tokenizer actually does (its post-processor)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(full) > len(plain) and full[0] == bos
    add_eos = eos is not None and len(full) > len(plain) and full[-1] == eos
    return add_bos, add_eos


def _vocabulary(writer, tokenizer, vocab_size: int, chat_template: t.Optional[str]) -> None:
    """The tokenizer as llama.cpp's converter writes it, padded to ``vocab_size``: a
    SentencePiece-style one (byte fallback) as ``_set_vocab_sentencepiece`` does
    (:mod:`gguf_spm`), a byte-level BPE as ``_set_vocab_gpt2`` does.

    Rows of the embedding that no token uses are named ``[PAD<id>]``, as the converter does,
    so that the vocabulary and the embedding have the same size.
    """
    spec = _backend_spec(tokenizer)
    if gguf_spm.is_sentencepiece(spec):
        tokens, scores, types = gguf_spm.vocabulary(tokenizer, spec, vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_add_space_prefix(gguf_spm.space_prefix(spec))
    else:
        _byte_level_vocabulary(writer, tokenizer, spec, vocab_size)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None and token_id < vocab_size:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    add_bos, add_eos = _special_flags(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if template:
        writer.add_chat_template(template)


def _byte_level_vocabulary(writer, tokenizer, spec: t.Dict[str, t.Any], vocab_size: int) -> None:
    """Tokens (unused rows ``[PAD<id>]``, user-defined), types and merges, as ``_set_vocab_gpt2``."""
    by_id = {i: tok for tok, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf_spm.USER_DEFINED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf_spm.CONTROL if added[i].special else gguf_spm.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf_spm.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(spec))


def _permute(weights, n_head: int):
    """llama.cpp's ``LlamaModel.permute``: interleave the two rotary halves of each head."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tensors(model, arch: str, quantization: str) -> t.Iterator[t.Tuple[str, t.Any, t.Any]]:
    """``(gguf name, data, ggml type)`` of every weight, renamed, permuted and converted."""
    import gguf
    import numpy as np

    config = model.config
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    names = gguf.get_tensor_name_map(
        next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), config.num_hidden_layers
    )
    wanted = {
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[quantization]
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the tied output projection from token_embd
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"Cannot write GGUF: no llama.cpp name for the tensor `{hf_name}` ({arch}).")
        data = tensor.detach().to("cpu").float().numpy()
        if arch in _PERMUTED and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            data = _permute(data, n_head if "q_proj" in hf_name else n_kv)
        if data.ndim <= 1:
            yield new_name, data.astype(np.float32), gguf.GGMLQuantizationType.F32
            continue
        qtype = wanted
        if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
            qtype = gguf.GGMLQuantizationType.F16  # rows that do not split into blocks
        yield new_name, gguf.quants.quantize(data, qtype), qtype

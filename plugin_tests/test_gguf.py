"""GGUF export: the merged model as one GGUF file for llama.cpp / Ollama, with a Modelfile.

Each file is read back with transformers' own GGUF loader (``from_pretrained(...,
gguf_file=...)``), which undoes llama.cpp's q/k permutation and rebuilds the tokenizer and
the chat template from the metadata: what it answers is what the file holds.

One SQLite datalayer (in the CLI's ``--data`` layout) is trained once for the module: ``chat``,
LoRA (+ ``lm_head``) with ``setup_chat_format`` on a tiny Llama whose tokenizer has merges.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from plugin_tests import fixtures
from superduper_transformers import cli
from superduper_transformers.checkpoint import verify_directory
from superduper_transformers.export import MANIFEST, MODELFILE, ExportError, export_model
from superduper_transformers.hf import gguf_file, gguf_spm, ollama

PROMPTS = [p for p, _ in fixtures.FACTS]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from superduper import CFG, superduper

    data = tmp_path_factory.mktemp("gguf-data")
    model_dir = fixtures.build_tiny_model(str(data / "tiny-merges"), merges=True)
    old = CFG.artifact_store
    CFG.artifact_store = f"filesystem://{data / 'artifact_store'}"
    try:
        db = superduper(f"sqlite:///{data / 'demo.db'}", force_apply=True)
        fixtures.insert_rows(db)
        llm = fixtures.make_llm(
            db,
            model_dir,
            "chat",
            setup_chat_format=True,
            lora_modules_to_save=["lm_head"],
            bf16=False,  # predict in fp32 on any CPU: the reference the files are compared with
            max_steps=300,
            save_steps=300,
            eval_strategy="no",
        )
        db.apply(llm, force=True)
        yield db, data
    finally:
        CFG.artifact_store = old


def _load_gguf(out):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (name,) = [f for f in os.listdir(out) if f.endswith(".gguf")]
    model = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=name).eval()
    return model, AutoTokenizer.from_pretrained(str(out), gguf_file=name), os.path.join(out, name)


def _chat_answers(model, tokenizer, prompts, max_new_tokens=4):
    """Greedy answers to ``prompts`` formatted with the file's own chat template, encoded
    as ``LLM.predict`` encodes a chat prompt (left padding, no special tokens added)."""
    import torch

    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    new = out[:, batch["input_ids"].shape[1] :]
    return [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]


def _verify(out, tmp_path):
    manifest = json.load(open(os.path.join(out, MANIFEST)))
    copy = tmp_path / f"{os.path.basename(out)}-without-manifest"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(MANIFEST))
    verify_directory(str(copy), manifest, "export")
    return manifest


def _metadata(path):
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}, {
        t.name: t.tensor_type.name for t in reader.tensors
    }


def test_f16_and_q8_0_answer_as_the_stored_model(trained, tmp_path):
    from superduper_transformers.hf.data import CHATML_TEMPLATE

    db, _ = trained
    llm = db.load("LLM", "chat")
    expected = fixtures.answers(llm)
    learned = sum(a == c for a, (_, c) in zip(expected, fixtures.FACTS))
    # the untrained model answers one token to everything: agreement must not be that (on
    # AVX2 kernels the same training learned 9 facts with 4 distinct answers; 5+ elsewhere)
    assert learned >= 6 and len(set(expected)) >= 3, expected

    agreement = {}
    for quantization in ("f16", "q8_0"):
        out = export_model(db, "chat", tmp_path / quantization, format="gguf", quantization=quantization)
        gguf_name = f"chat-{quantization.upper()}.gguf"
        assert sorted(os.listdir(out)) == sorted([gguf_name, MODELFILE, MANIFEST])
        assert set(_verify(out, tmp_path)) == {gguf_name, MODELFILE}

        model, tokenizer, path = _load_gguf(out)
        assert tokenizer.chat_template == CHATML_TEMPLATE  # what training formatted with
        got = _chat_answers(model, tokenizer, PROMPTS)
        agreement[quantization] = sum(a == b for a, b in zip(got, expected))

        meta, types = _metadata(path)
        assert meta["general.architecture"] == "llama" and meta["general.name"] == "chat"
        assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
        assert meta["tokenizer.ggml.add_bos_token"] is False  # the tiny tokenizer adds none
        assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id == 2
        assert len(meta["tokenizer.ggml.merges"]) == 24
        matrix = "Q8_0" if quantization == "q8_0" else "F16"
        assert types["blk.0.attn_q.weight"] == types["output.weight"] == matrix
        assert types["blk.0.attn_norm.weight"] == "F32"  # 1-D tensors stay f32, as in llama.cpp

    # f16 rounds each weight to 11 significant bits: no greedy choice of this model is that close.
    assert agreement["f16"] == len(PROMPTS), agreement
    # q8_0 stores each block of 32 weights as int8 times one f16 scale (relative error up to
    # ~0.4% of the block's largest weight): a prompt whose two best next tokens are that close
    # (the half-learned ones of this tiny model) may flip. Seen: 31-32 of 32; allowed: 3 flips.
    assert agreement["q8_0"] >= len(PROMPTS) - 3, agreement


@pytest.fixture(scope="module")
def llama_cpp():
    """llama-cpp-python (llama.cpp built from source), or a skip saying how to install it
    (module-scoped and named first, so that a skip comes before the training fixture)."""
    return pytest.importorskip(
        "llama_cpp",
        reason="llama.cpp's runtime is not installed: `pip install '.[gguf-runtime]'` (`make test-slow` does)",
    )


def _runtime(llama_cpp, path, **kwargs):
    # n_ctx=0: the model's own context length
    return llama_cpp.Llama(model_path=path, n_ctx=0, n_batch=128, n_threads=1, verbose=False, **kwargs)


@pytest.mark.slow
def test_llama_cpp_answers_as_the_stored_model(llama_cpp, trained, tmp_path):
    """llama.cpp's own runtime loads each file, formats the question with the chat template
    stored in it, tokenizes and decodes greedily, and answers as ``llm.predict``."""
    from transformers import AutoTokenizer

    from superduper_transformers.hf.data import CHATML_TEMPLATE

    db, _ = trained
    expected = fixtures.answers(db.load("LLM", "chat"))
    agreement = {}
    for quantization in ("f16", "q8_0"):
        out = export_model(db, "chat", tmp_path / quantization, format="gguf", quantization=quantization)
        (name,) = [f for f in os.listdir(out) if f.endswith(".gguf")]
        tokenizer = AutoTokenizer.from_pretrained(str(out), gguf_file=name)
        runtime = _runtime(llama_cpp, os.path.join(out, name), chat_format="chat_template.default")
        assert runtime.metadata["tokenizer.chat_template"] == CHATML_TEMPLATE
        got = []
        for prompt in PROMPTS:
            turn = [{"role": "user", "content": prompt}]
            text = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert runtime.tokenize(text.encode(), add_bos=False, special=True) == ids, text
            reply = runtime.create_chat_completion(turn, max_tokens=4, temperature=0.0, repeat_penalty=1.0)
            got.append(reply["choices"][0]["message"]["content"].strip())
        agreement[quantization] = sum(a == b for a, b in zip(got, expected))
        runtime.close()
    # the same margins as read back by transformers (see the test above)
    assert agreement["f16"] == len(PROMPTS), agreement
    assert agreement["q8_0"] >= len(PROMPTS) - 3, agreement


@pytest.mark.slow
def test_llama_cpp_tokenizes_a_sentencepiece_vocabulary_as_transformers(llama_cpp, tmp_path):
    """llama.cpp merges a SentencePiece vocabulary by the scores written (no merges in the
    file): its tokens, logits and greedy continuations equal the transformers model's."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = _sentencepiece_tokenizer(str(tmp_path / "sp"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config("llama", len(tokenizer))).eval().half().float()
    path = str(tmp_path / "sp.gguf")
    gguf_file.write_gguf(model, tokenizer, path, "f16", name="tiny-sp")
    runtime = _runtime(llama_cpp, path, logits_all=True)
    for text in SP_TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert runtime.tokenize(text.encode(), add_bos=False) == ids, text
        runtime.reset()
        runtime.eval(ids)
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0].numpy()
        error = abs(runtime.scores[: len(ids)] - reference).max() / abs(reference).max()
        assert error < 0.01, (text, float(error))
        runtime.reset()
        continuation = []
        for token in runtime.generate(ids, temp=0.0, repeat_penalty=1.0):
            continuation.append(token)
            if len(continuation) == 6:
                break
        with torch.no_grad():
            greedy = model.generate(torch.tensor([ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert continuation == greedy[0, len(ids) :].tolist(), text
    runtime.close()  # (left to the garbage collector, llama-cpp-python errors at exit)


def test_modelfile_and_how_to_run_it(trained, tmp_path):
    db, _ = trained
    out = export_model(db, "chat", tmp_path / "m", format="gguf", quantization="q8_0")
    text = open(os.path.join(out, MODELFILE)).read()
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body[0] == "FROM ./chat-Q8_0.gguf"
    assert text.count('TEMPLATE """') == 1 and ollama.OLLAMA_CHATML in text  # ChatML, multi-turn
    # predict_kwargs={"max_new_tokens": 4}, greedy (do_sample=False by default)
    assert "PARAMETER temperature 0" in body and "PARAMETER num_predict 4" in body
    stops = [line for line in body if line.startswith("PARAMETER stop")]
    assert stops == ['PARAMETER stop "<|im_start|>"', 'PARAMETER stop "<|im_end|>"', 'PARAMETER stop "</s>"']
    assert f"#   ollama create chat -f {out}/Modelfile" in text
    assert (
        f"#   llama-completion -m {out}/chat-Q8_0.gguf -no-cnv "
        "-p '<|im_start|>user\\nYour question<|im_end|>\\n<|im_start|>assistant\\n' -n 4 --temp 0"
    ) in text


def test_cli_exports_gguf_and_prints_how_to_run_it(trained, tmp_path, capsys):
    db, data = trained
    out = tmp_path / "cli-gguf"
    capsys.readouterr()
    args = ["--data", str(data), "export", "chat", "--out", str(out), "--format", "gguf"]
    assert cli.main([*args, "--quantization", "bf16"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: {MODELFILE}, chat-BF16.gguf (+ {MANIFEST})")
    assert f"ollama create chat -f {out}/Modelfile" in printed and "llama-server -m" in printed
    model, tokenizer, path = _load_gguf(out)
    assert _metadata(path)[1]["blk.1.ffn_down.weight"] == "BF16"
    expected = fixtures.answers(db.load("LLM", "chat"))
    # bf16 keeps 8 significant bits: compared on the learned prompts only
    got = _chat_answers(model, tokenizer, PROMPTS)
    assert sum(a == b for a, b in zip(got, expected)) >= len(PROMPTS) - 3

    # refused with the reason on stderr, exit status 2
    refused = ["--data", str(data), "export", "chat", "--out", str(tmp_path / "x"), "--format", "gguf"]
    assert cli.main([*refused, "--dtype", "bf16"]) == 2
    assert "`dtype`='bf16' applies to format `hf`" in capsys.readouterr().err


def _tiny_gpt2(directory):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    fixtures.build_tiny_model(directory, merges=True)  # for its tokenizer
    tokenizer = AutoTokenizer.from_pretrained(directory)
    for f in os.listdir(directory):
        if f in ("config.json", "model.safetensors", "generation_config.json"):
            os.remove(os.path.join(directory, f))
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def test_what_cannot_be_written_is_refused_before_anything_is(trained, tiny_model_dir, tmp_path):
    from superduper_transformers import LLM

    db, _ = trained
    gpt2 = _tiny_gpt2(str(tmp_path / "gpt2-model"))
    db.apply(LLM("gpt2", model_name_or_path=gpt2, adapter_id=gpt2), force=True)
    # the default tiny tokenizer has no merges, which llama.cpp cannot read
    db.apply(LLM("no-merges", model_name_or_path=tiny_model_dir, adapter_id=tiny_model_dir), force=True)
    exports = tmp_path / "exports"
    exports.mkdir()

    with pytest.raises(
        ExportError,
        match=r"LLM `gpt2` cannot be exported as GGUF: architecture `gpt2` \(GPT2LMHeadModel\) cannot "
        r"be written as GGUF yet: the supported ones are llama, mistral, qwen2\.",
    ):
        export_model(db, "gpt2", exports / "gpt2", format="gguf")
    with pytest.raises(ExportError, match="byte-level BPE without merges: llama.cpp refuses such a file"):
        export_model(db, "no-merges", exports / "no-merges", format="gguf", quantization="q8_0")
    with pytest.raises(ExportError, match=r"`quantization`='q4_0' is not one of f16, bf16, q8_0"):
        export_model(db, "chat", exports / "q4", format="gguf", quantization="q4_0")
    with pytest.raises(ExportError, match=r"`quantization`='q8_0' applies to format `gguf`"):
        export_model(db, "chat", exports / "hf", quantization="q8_0")
    with pytest.raises(ExportError, match=r"`format`='onnx' is not one of hf, gguf"):
        export_model(db, "chat", exports / "onnx", format="onnx")
    assert os.listdir(exports) == []  # no folder, no staging leftovers


def _tokenizer(pre: str):
    """A byte-level BPE tokenizer with the pre-tokenizer llama.cpp calls ``pre``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre == "gpt-2")
    tok.pre_tokenizer = (
        byte_level
        if pre == "gpt-2"
        else pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(gguf_file.SPLITS[pre]), behavior="isolated"), byte_level]
        )
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=256 + len(specials) + 60,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([SAMPLE] * 5, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


SAMPLE = "Hello world, it's 12345 o'clock!\n  The user's assistant said: 678 + 90 = 768.\tDone"


def _config(model_type: str, vocab_size: int):
    from transformers import AutoConfig

    shape = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: k is permuted with 2 heads
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
        tie_word_embeddings=model_type == "qwen2",  # no output.weight: llama.cpp reuses the embedding
        bos_token_id=1,
        eos_token_id=2,
    )
    return AutoConfig.for_model(model_type, **shape)


@pytest.mark.parametrize(
    "model_type, pre",
    [("llama", "llama-bpe"), ("mistral", "gpt-2"), ("qwen2", "qwen2")],
)
def test_llama_family_round_trips_through_transformers(model_type, pre, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = _tokenizer(pre)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(model_type, len(tokenizer))).eval()
    ids = torch.tensor([tokenizer(SAMPLE)["input_ids"]])
    with torch.no_grad():
        reference = model(ids).logits
    # rounding the weights moves the logits by about this much of their range (seen: 0.04%,
    # 0.4%, 1.2%); a q/k row in the wrong order, a missing bias or tie moves them by ~100%
    tolerance = {"f16": 0.005, "bf16": 0.02, "q8_0": 0.05}
    for quantization, relative in tolerance.items():
        name = f"{model_type}-{quantization}.gguf"
        # (not named "mistral" exactly: transformers then looks for a gguf "mistral" architecture)
        gguf_file.write_gguf(model, tokenizer, str(tmp_path / name), quantization, name=f"tiny-{model_type}")
        loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=name).eval()
        tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=name)
        for text in (SAMPLE, "  spaces\n\nand 1234567 digits", "<s>specials</s>"):
            assert tok(text)["input_ids"] == tokenizer(text)["input_ids"], (quantization, text)
        assert loaded.config.tie_word_embeddings == (model_type == "qwen2")
        assert loaded.config.num_key_value_heads == 2
        assert loaded.config.rope_parameters["rope_theta"] == 50000.0
        with torch.no_grad():
            error = (loaded(ids).logits - reference).abs().max() / reference.abs().max()
        assert error < relative, (quantization, float(error))


def _sentencepiece_tokenizer(directory):
    """A Llama 2-style SentencePiece BPE (byte fallback, no normalisation, a dummy prefix),
    trained on a few lines, loaded as transformers loads TinyLlama's or Llama 2's."""
    spm = pytest.importorskip("sentencepiece", reason="sentencepiece trains the tokenizer (the `test` extra)")
    from transformers import LlamaTokenizer

    os.makedirs(directory, exist_ok=True)
    lines = [
        SAMPLE,
        "The capital of Zorblaxia is Quintara.",
        "What is 5+1? It is 6.",
        "spaces  and\nnewlines",
    ]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 20),
        model_prefix=os.path.join(directory, "tokenizer"),
        model_type="bpe",
        vocab_size=340,  # 3 specials + 256 bytes + the characters + ~40 merges
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        normalization_rule_name="identity",  # as Llama 2: llama.cpp normalises nothing
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    return LlamaTokenizer.from_pretrained(directory)


#: Text without special tokens: transformers puts ``▁`` before the first word only, llama.cpp's
#: SentencePiece vocabulary (and transformers reading the GGUF) also after each special token.
SP_TEXTS = [
    SAMPLE,
    "The capital of Zorblaxia is",
    "Quintara capital assistant Zorblaxia o'clock",  # (with equal scores llama.cpp splits these two otherwise)
    "spaces  and\nnewlines \u00e9 \u00fc \U0001f600",
    "5+1=",
]


def test_sentencepiece_tokenizer_is_written_as_llama_cpp_reads_it(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = _sentencepiece_tokenizer(str(tmp_path / "sp"))
    torch.manual_seed(0)
    # weights that f16 holds exactly: the file and the model then compute the same
    model = AutoModelForCausalLM.from_config(_config("llama", len(tokenizer))).eval().half().float()
    gguf_file.write_gguf(model, tokenizer, str(tmp_path / "sp.gguf"), "f16", name="tiny-sp")

    meta, _ = _metadata(str(tmp_path / "sp.gguf"))
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_space_prefix"] is True
    assert "tokenizer.ggml.merges" not in meta  # llama.cpp merges by score, as for Llama 2
    tokens, scores, types = (meta[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
    assert [types[i] for i in (0, 1, 2)] == [2, 3, 3]  # unknown, control (<s>, </s>)
    assert tokens[13] == "<0x0A>" and types[13] == 6  # byte fallback for "\n"
    merged = [scores[i] for i, tok in enumerate(tokens) if len(tok) > 1 and types[i] == 1]
    assert merged == sorted(merged, reverse=True) and merged[0] == 0.0  # in merge order, as its scores

    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="sp.gguf").eval()
    read = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="sp.gguf")
    for text in SP_TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert read(text)["input_ids"] == ids, text
        assert tokenizer.convert_ids_to_tokens(ids)[0].startswith("\u2581")  # the dummy prefix
        assert read.decode(ids, skip_special_tokens=True) == text
    with torch.no_grad():
        for text in SP_TEXTS:
            ids = tokenizer(text, return_tensors="pt")
            expected = model.generate(**ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
            got = loaded.generate(**ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
            assert got.tolist() == expected.tolist(), text


def test_unknown_pre_tokenizer_unigram_and_normalising_sentencepiece_are_refused():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    whitespace = PreTrainedTokenizerFast(tokenizer_object=tok)
    issues = gguf_file.tokenizer_issues(whitespace)
    assert len(issues) == 1 and "is not one llama.cpp names: known are gpt-2" in issues[0]
    unigram = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram([("a", 0.0)])))
    assert "is a `Unigram` model: only BPE tokenizers" in gguf_file.tokenizer_issues(unigram)[0]
    # SentencePiece with Unicode normalisation (its default nmt_nfkc): llama.cpp normalises nothing
    spm = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")], byte_fallback=True))
    spm.normalizer, spm.pre_tokenizer = normalizers.NFKC(), pre_tokenizers.Metaspace()
    issues = gguf_file.tokenizer_issues(PreTrainedTokenizerFast(tokenizer_object=spm))
    assert (
        "SentencePiece-style BPE (byte fallback) with normalizer NFKC, pre-tokenizer Metaspace" in issues[0]
    )
    # ... while TinyLlama's and Llama 2's older tokenizer.json form (the space prefix as a
    # Prepend + Replace normaliser, no pre-tokenizer) is written, with llama.cpp's space prefix
    spm.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    spm.pre_tokenizer = None
    legacy = PreTrainedTokenizerFast(tokenizer_object=spm)
    assert gguf_file.tokenizer_issues(legacy) == []
    assert gguf_spm.space_prefix(json.loads(legacy.backend_tokenizer.to_str())) is True
    rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0}
    rope.update(high_freq_factor=4.0, original_max_position_embeddings=8192)
    scaled = LlamaConfig(rope_parameters=rope)
    assert "`rope_scaling` of type `llama3` cannot be written" in gguf_file.model_type_issues(scaled)[0]
    small = LlamaConfig(vocab_size=2)
    assert (
        "the tokenizer has 3 tokens and the embedding 2 rows"
        in gguf_file.export_issues(small, whitespace)[-1]
    )


def test_modelfile_templates_follow_how_predict_formats_prompts(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # plain text: the prompt_template, with Go template braces written literally
    template, stops = ollama.prompt_format(tokenizer, "Sum {{{{ {input} }}}}\nA:", chat_format=False)
    assert template == 'Sum {{ "{{" }} {{ .Prompt }} }}\nA:' and stops == ["</s>"]
    # the demo's hand-written ChatML prompt_template: exactly that, and ChatML's stops
    demo = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
    template, stops = ollama.prompt_format(tokenizer, demo, chat_format=False)
    assert template == demo.replace("{input}", "{{ .Prompt }}")
    assert stops == ["<|im_start|>", "<|im_end|>", "</s>"]
    # a chat template that is not ChatML (it adds a default system prompt): one rendered turn
    tokenizer.chat_template = (
        "<|system|>Be brief.</s>{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert not ollama.is_chatml(tokenizer)
    template, stops = ollama.prompt_format(tokenizer, "Q: {input}", chat_format=True)
    assert template == "<|system|>Be brief.</s><|user|>Q: {{ .Prompt }}</s><|assistant|>"
    assert stops == ["</s>"]

    params, dropped = ollama.parameters(
        {"max_new_tokens": 20, "do_sample": True, "top_p": 0.9, "num_beams": 2, "pad_token_id": 0}
    )
    assert dict(params) == {"temperature": 1.0, "num_predict": 20, "top_p": 0.9}  # transformers' default T
    assert dropped == ["num_beams=2"]
    text = ollama.modelfile("m.gguf", "{{ .Prompt }}", ['say "stop"'], {"num_beams": 2})
    assert 'PARAMETER stop "say \\"stop\\""' in text
    assert "# not carried over (no Ollama parameter): num_beams=2" in text
    with pytest.raises(ValueError, match='holds """, which a Modelfile TEMPLATE cannot quote'):
        ollama.modelfile("m.gguf", 'say """{{ .Prompt }}', [], {})
    assert ollama.ollama_name("My LLM/v2") == "my-llm-v2"

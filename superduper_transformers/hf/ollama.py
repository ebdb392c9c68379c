"""An Ollama ``Modelfile`` for an exported GGUF file, and the commands that run it.

The ``TEMPLATE`` reproduces the prompt ``LLM.predict`` builds for a text prompt, so that
Ollama formats a question as training did:

- no chat format: the LLM's ``prompt_template`` with ``{input}`` as ``{{ .Prompt }}``;
- chat format with a ChatML template (ours when the tokenizer has none, SmolLM2's, Qwen's
  without their default system prompt): Ollama's multi-turn ChatML template;
- any other chat template: its rendering of one user turn, the turn as ``{{ .Prompt }}``
  (one question at a time, exactly as ``predict`` renders it).

Generation settings of ``predict_kwargs`` become ``PARAMETER`` lines (greedy -> temperature 0).
"""

from __future__ import annotations

import re
import shlex
import typing as t

from superduper_transformers.hf.data import CHATML_TEMPLATE, chat_prompt, end_of_turn

#: transformers ``generate`` keyword -> Ollama ``PARAMETER`` name.
PARAMETERS = {
    "max_new_tokens": "num_predict",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repeat_penalty",
}
#: Ollama's ChatML template (its ``chatml`` template, with system and earlier turns).
OLLAMA_CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
_SLOT = "\x00input\x00"
_CHATML_STOPS = ("<|im_start|>", "<|im_end|>")


def _go_literal(text: str) -> str:
    """``text`` as literal text of a Go template: only ``{{`` opens an action there."""
    return text.replace("{{", '{{ "{{" }}')


def is_chatml(tokenizer) -> bool:
    """Whether the tokenizer's chat template (ChatML when it has none) renders conversations,
    and a lone question, exactly as ChatML does (no default system prompt added)."""
    template = getattr(tokenizer, "chat_template", None) or CHATML_TEMPLATE
    conversations = (
        [{"role": "user", "content": "Q"}],
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
            {"role": "user", "content": "R"},
        ],
    )

    def render(conversation, chat_template):
        return tokenizer.apply_chat_template(
            list(conversation), chat_template=chat_template, add_generation_prompt=True, tokenize=False
        )

    try:
        return all(render(c, template) == render(c, CHATML_TEMPLATE) for c in conversations)
    except Exception:  # a template that refuses a system turn, etc.: not ChatML
        return False


def prompt_format(tokenizer, prompt_template: str, chat_format: bool) -> t.Tuple[str, t.List[str]]:
    """``(Ollama TEMPLATE, stop strings)`` for prompts formatted as ``LLM.predict`` does.

    :param tokenizer: The exported tokenizer.
    :param prompt_template: The LLM's ``prompt_template`` (with ``{input}``).
    :param chat_format: ``LLMTrainer.setup_chat_format`` of the LLM's trainer.
    """
    inner = (prompt_template or "{input}").format(input=_SLOT)
    if not chat_format:
        rendered = inner
    elif inner == _SLOT and is_chatml(tokenizer):
        rendered = None
    else:
        rendered = chat_prompt(tokenizer, inner)
    if rendered is None:
        template = OLLAMA_CHATML
        stops = list(_CHATML_STOPS)
    else:
        template = _go_literal(rendered).replace(_SLOT, "{{ .Prompt }}")
        stops = [s for s in _CHATML_STOPS if s in rendered]
    turn_end = end_of_turn(tokenizer) if chat_format else ""
    if turn_end:
        stops.append(turn_end)
    if tokenizer.eos_token:
        stops.append(tokenizer.eos_token)
    return template, list(dict.fromkeys(stops))


def parameters(generate_kwargs: t.Mapping[str, t.Any]) -> t.Tuple[t.List[t.Tuple[str, t.Any]], t.List[str]]:
    """``([(Ollama parameter, value)], [generate keywords without an equivalent])``.

    :param generate_kwargs: The LLM's generation settings (``LLM.generate_kwargs()``).
    """
    kwargs = dict(generate_kwargs)
    sampling = bool(kwargs.pop("do_sample", False))
    out, dropped = [], []
    if not sampling:
        out.append(("temperature", 0))  # greedy, as generate with do_sample=False
        kwargs.pop("temperature", None)
    elif "temperature" not in kwargs:
        kwargs["temperature"] = 1.0  # transformers' default; Ollama's is 0.8
    for key, value in kwargs.items():
        if key in PARAMETERS and value is not None:
            out.append((PARAMETERS[key], value))
        elif key != "pad_token_id":
            dropped.append(f"{key}={value!r}")
    return out, dropped


def ollama_name(identifier: str) -> str:
    """A model name Ollama accepts (lower case letters, digits, ``.``, ``_``, ``-``)."""
    return re.sub(r"[^a-z0-9._-]+", "-", identifier.lower()).strip("-._") or "model"


def instructions(
    out_dir: str, gguf_file: str, name: str, example_prompt: str, num_predict: int
) -> t.List[str]:
    """How to run the export with Ollama and with llama.cpp: lines of text, commands indented.

    :param out_dir: The export folder.
    :param gguf_file: The GGUF file's name in it.
    :param name: The Ollama model name.
    :param example_prompt: A prompt formatted as the model was trained (for llama.cpp).
    :param num_predict: Tokens to generate.
    """
    folder = shlex.quote(out_dir)
    model = shlex.quote(f"{out_dir}/{gguf_file}")
    # llama.cpp reads \n in -p as a newline (its -e/--escape is on by default)
    prompt = shlex.quote(example_prompt.replace("\\", "\\\\").replace("\n", "\\n"))
    return [
        "Run it with Ollama:",
        f"  ollama create {name} -f {folder}/Modelfile",
        f'  ollama run {name} "Your question"',
        "or with llama.cpp (one prompt formatted as in training; a chat server using the stored chat template):",
        f"  llama-completion -m {model} -no-cnv -p {prompt} -n {num_predict} --temp 0",
        f"  llama-server -m {model} --jinja",
    ]


def modelfile(
    gguf_file: str,
    template: str,
    stops: t.Sequence[str],
    generate_kwargs: t.Mapping[str, t.Any],
    header: t.Sequence[str] = (),
) -> str:
    """The text of an Ollama ``Modelfile`` for ``gguf_file`` (in the same folder).

    :param gguf_file: The GGUF file's name.
    :param template: The ``TEMPLATE`` (Go template syntax).
    :param stops: ``PARAMETER stop`` strings.
    :param generate_kwargs: The LLM's generation settings.
    :param header: Lines written as comments at the top (how to run it).
    :raises ValueError: when the template holds ``\"\"\"`` (a Modelfile cannot quote it).
    """
    if '"""' in template:
        raise ValueError(
            f'The prompt format {template!r} holds """, which a Modelfile TEMPLATE cannot quote.'
        )
    params, dropped = parameters(generate_kwargs)
    lines = [f"# {line}" for line in header] + [f"FROM ./{gguf_file}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER {k} {v}" for k, v in params]
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops]
    lines += [f"# not carried over (no Ollama parameter): {d}" for d in dropped]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    """A Modelfile string value (double-quoted, with backslashes and quotes escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

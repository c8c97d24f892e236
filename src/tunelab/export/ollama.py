"""`ollama`: a folder with the GGUF file and a Modelfile, ready for `ollama create NAME -f Modelfile`.

Ollama renders prompts with a Go template, not the Jinja template the model was trained with,
so the Jinja template has to be translated. Rather than parse Jinja, we recognise it by what it
renders: a template counts as, say, ChatML only if rendering probe conversations with it gives
exactly what the ChatML reference renderer gives (a default system prompt is allowed and is
carried over as SYSTEM). Anything else is refused with an error, since a silently different
prompt format is the classic cause of a fine-tune that "stops working" after export.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.export.base import ExportError
from tunelab.export.gguf import export_gguf
from tunelab.utils.io import atomic_write_text

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class ChatStyle:
    """A prompt format Ollama can express: a reference renderer, its Go template and its stop tokens."""

    render: Callable[[Messages, bool], str]  # (messages, add_generation_prompt) -> prompt text
    bos: str  # the BOS text a Jinja template may start with (llama.cpp adds it, so the Go template omits it)
    go_template: str
    stop: tuple[str, ...]


def _chatml(messages: Messages, gen: bool) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if gen else "")


def _llama3(messages: Messages, gen: bool) -> str:
    text = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
    return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if gen else "")


CHATML_GO = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

LLAMA3_GO = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"""

CHAT_STYLES: dict[str, ChatStyle] = {
    "chatml": ChatStyle(_chatml, "", CHATML_GO, ("<|im_start|>", "<|im_end|>")),
    "llama3": ChatStyle(_llama3, "<|begin_of_text|>", LLAMA3_GO,
                        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
}

_PROBES: list[Messages] = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
]


def detect_chat_style(chat_template: str, tokenizer: Any) -> tuple[str, str | None]:
    """Return (style name, default system prompt or None) for a Jinja chat template, or raise ExportError.

    The template is rendered (through the tokenizer, with its special tokens) on probe
    conversations and compared with each style's reference rendering.
    """
    def jinja(messages: Messages) -> str:
        return tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                             add_generation_prompt=True)

    try:
        rendered = [jinja(m) for m in _PROBES]
    except Exception as e:  # a template that raises on plain conversations cannot be translated either
        raise ExportError(f"the chat template fails on a plain conversation ({e}); cannot build an Ollama TEMPLATE") from e
    for name, style in CHAT_STYLES.items():
        texts = [t[len(style.bos):] if style.bos and t.startswith(style.bos) else t for t in rendered]
        if texts[1] != style.render(_PROBES[1], True):
            continue
        if texts[0] == style.render(_PROBES[0], True):
            return name, None
        for system in _default_systems(texts[0], style):
            if texts[0] == style.render([{"role": "system", "content": system}, *_PROBES[0]], True):
                return name, system
    raise ExportError(
        "cannot translate this chat template to an Ollama TEMPLATE: it renders neither like "
        f"{' nor '.join(CHAT_STYLES)}. Rendered for one user message it gives:\n{rendered[0]!r}\n"
        "Write the Modelfile's TEMPLATE by hand (https://github.com/ollama/ollama/blob/main/docs/template.md), "
        "or export --format gguf, whose tokenizer.chat_template llama.cpp applies itself"
    )


def _default_systems(text: str, style: ChatStyle) -> list[str]:
    """Candidate default system prompts: what sits in a leading system turn of `text` under `style`."""
    head = style.render([{"role": "system", "content": "\x00"}], False)
    prefix, suffix = head.split("\x00")
    if not text.startswith(prefix) or suffix not in text[len(prefix):]:
        return []
    return [text[len(prefix):text.index(suffix, len(prefix))]]


def modelfile(gguf_name: str, chat_template: str, tokenizer: Any, system: str | None = None,
              parameters: dict[str, Any] | None = None) -> str:
    """The text of an Ollama Modelfile: FROM the GGUF, TEMPLATE translated from the Jinja template, stops, SYSTEM.

    `system` overrides the template's own default system prompt; `parameters` adds PARAMETER
    lines (e.g. {"temperature": 0.7, "num_ctx": 4096}).
    """
    style_name, default_system = detect_chat_style(chat_template, tokenizer)
    style = CHAT_STYLES[style_name]
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{style.go_template}"""', ""]
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in style.stop]
    lines += [f"PARAMETER {k} {json.dumps(v) if isinstance(v, str) else v}" for k, v in (parameters or {}).items()]
    system = system if system is not None else default_system
    if system:
        if '"""' in system:
            raise ExportError('the system prompt contains """, which a Modelfile cannot quote; remove it')
        lines += ["", f'SYSTEM """{system}"""']
    return "\n".join(lines) + "\n"


def export_ollama(model: Any, tokenizer: Any, chat_template: str | None, out_path: str | Path, *,
                  quant: str = "q8_0", system: str | None = None, parameters: dict[str, Any] | None = None,
                  name: str | None = None, pre: str | None = None) -> Path:
    """Write `<out_path>/model-<quant>.gguf` and `<out_path>/Modelfile`; return the Modelfile's path.

    `quant`, `name` and `pre` go to the GGUF exporter. The Modelfile is built first, so a template that cannot be translated fails before any
    weights are written.
    """
    if not chat_template:
        raise ExportError("the ollama format needs the run's chat template (chat_template.jinja); none was given")
    out_path = Path(out_path)
    gguf_name = f"model-{quant.lower()}.gguf"
    text = modelfile(gguf_name, chat_template, tokenizer, system=system, parameters=parameters)
    export_gguf(model, tokenizer, chat_template, out_path / gguf_name, quant=quant, name=name, pre=pre)
    return atomic_write_text(out_path / "Modelfile", text)

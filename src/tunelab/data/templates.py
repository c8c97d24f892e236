"""Chat templates and label masks: render a conversation, train only on the assistant's turns.

The tokenizer's own template comes first; named fallbacks cover tokenizers without one.
The template actually used is saved with the run, so chat and serve render exactly what
training saw. Prompt + answer tokenization (`tokenize_conversation`, `tokenize_answer`, `prompt_ids`) lives
here too; its one truncation rule, IGNORE_INDEX and Tokenized live in data/tokenize.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tunelab.data.formats import Conversation
from tunelab.data.io import DataError
from tunelab.data.tokenize import (  # IGNORE_INDEX and Tokenized are defined there, importable from here too
    IGNORE_INDEX,
    Tokenized,
    encode,
    join_truncated,
    truncate_labeled,
)
from tunelab.utils.userfiles import read_text

NAMED_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "qwen": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "alpaca": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
        "{% else %}{{ '### Input:\n' + message['content'] + '\n\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
    ),
    "vicuna": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + ' ' }}"
        "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
        "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token + ' ' }}"
        "{% else %}{{ 'TOOL: ' + message['content'] + ' ' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    # ChatML with tool calling in the Hermes/Qwen2.5 style: schemas in the system turn, calls in <tool_call>,
    # results as <tool_response> in a user turn.
    "chatml-tools": (
        "{% if tools %}{{ '<|im_start|>system\n' }}{% if messages[0]['role'] == 'system' %}"
        "{{ messages[0]['content'] + '\n\n' }}{% endif %}"
        "{{ '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n'"
        " + 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}"
        "{% for tool in tools %}{{ '\n' }}{{ tool | tojson }}{% endfor %}"
        "{{ '\n</tools>\n\nFor each function call, return a json object with function name and arguments '"
        " + 'within <tool_call></tool_call> XML tags:\n<tool_call>\n'"
        " + '{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n' }}"
        "{% elif messages[0]['role'] == 'system' %}"
        "{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' and loop.first %}"
        "{% elif message['role'] == 'assistant' and message['tool_calls'] %}{{ '<|im_start|>assistant\n' }}"
        "{% if message['content'] %}{{ message['content'] + '\n' }}{% endif %}"
        "{% for call in message['tool_calls'] %}{% if not loop.first %}{{ '\n' }}{% endif %}"
        "{{ '<tool_call>\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
        "{{ call['function']['arguments'] | tojson }}{{ '}\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\n' }}"
        "{% elif message['role'] == 'tool' %}"
        "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Qwen3: ChatML without a default system turn. `enable_thinking` (data.template_options) false adds the empty
    # think block Qwen3 answers with in non-thinking mode, to the generation prompt and to answers lacking one.
    "qwen3": (
        "{%- for message in messages %}{%- if message['role'] == 'assistant' %}"
        "{%- set content = message['content'] %}"
        "{%- if enable_thinking is defined and enable_thinking is false and '<think>' not in content %}"
        "{%- set content = '<think>\n\n</think>\n\n' + content %}{%- endif %}"
        "{{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}"
        "{%- else %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endif %}"
        "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
        "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}"
        "{%- endif %}{%- endif %}"
    ),
    # Gemma and Gemma 2 (one template): no system role, so a system message is put before the first user turn.
    "gemma": (
        "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}{% else %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + (ns.system if role == 'user' else '') + message['content'] | trim"
        " + '<end_of_turn>\n' }}{% if role == 'user' %}{% set ns.system = '' %}{% endif %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    # Mistral instruct ([INST] ... [/INST]); a system message goes before the first user message.
    "mistral": (
        "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
        "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
        "{% set ns.system = '' %}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
    ),
    # Phi-3 / Phi-3.5: its own template without the eos it appends after a whole conversation (turns end at <|end|>).
    "phi3": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    # DeepSeek-R1 (distill) and V3 markup. enable_thinking true prefills `<think>\n` as R1's template does; false
    # prefills an empty think block; unset leaves the answer's start to the model.
    "deepseek": (
        "{% set ns = namespace(system='') %}{% for message in messages %}{% if message['role'] == 'system' %}"
        "{% set ns.system = message['content'] %}{% endif %}{% endfor %}{{ bos_token }}{{ ns.system }}"
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
        "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}"
        "{% if enable_thinking is defined and enable_thinking %}{{ '<think>\n' }}"
        "{% elif enable_thinking is defined %}{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}"
    ),
}

THINK_MASK_MARK = "{#- tunelab: think_loss=mask -#}"
"""Marks a template whose `<think>...</think>` content is left out of the loss (data.template_options.think_loss).
A Jinja comment renders nothing; the mark travels in the run's saved template, so evaluation masks alike."""
THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


def apply_template_options(template: str, enable_thinking: bool | None = None, think_loss: str = "keep") -> str:
    """The template with the run's reasoning options written into it, so training, chat and serve agree:
    ``enable_thinking`` becomes a Jinja ``set`` at its top (Qwen3's and the named qwen3/deepseek templates read
    it), ``think_loss="mask"`` adds THINK_MASK_MARK. No options: the template unchanged."""
    head = ""
    if enable_thinking is not None:
        head += "{%- set enable_thinking = " + ("true" if enable_thinking else "false") + " -%}"
    if think_loss == "mask":
        head += THINK_MASK_MARK
    return head + template

TOOLS_SYSTEM_PREAMBLE = ("You can call these tools. To call one, answer with a JSON object "
                         '{"name": <tool name>, "arguments": {...}}.\nTools: ')

# End-of-turn markers a template may use; generation stops on those present in the template.
TURN_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<end_of_turn>",
                    "<｜end▁of▁sentence｜>")


class TemplateError(ValueError):
    """A chat template that cannot be used for training; the message says why and what to set."""


def resolve_template(tokenizer, name: str | None) -> str:
    """The Jinja template to use: a named one, a .jinja file, or the tokenizer's own (chatml if it has none)."""
    if name is None:
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # some tokenizers keep several; 'default' is the chat one
            own = own.get("default")
        return own or NAMED_TEMPLATES["chatml"]
    if name in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[name]
    path = Path(name)
    if path.suffix == ".jinja" and path.is_file():
        return read_text(path, TemplateError)  # strict UTF-8, naming the file and line
    raise TemplateError(f"model.chat_template: {name!r} is neither a named template "
                        f"({', '.join(NAMED_TEMPLATES)}) nor an existing .jinja file")


def render(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool = False,
           tools: list[dict] | None = None) -> str:
    """Render messages to text with the given template (no tokenization); `tools` go to templates that use them."""
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt, tools=tools)


def supports_tools(template: str) -> bool:
    """Whether a template renders tool schemas and assistant tool calls itself."""
    return "tools" in template and "tool_calls" in template


def template_messages(conv: Conversation, template: str) -> tuple[list[dict], list[dict] | None]:
    """The messages and tools to hand to the template for this conversation.

    Templates with tool support get OpenAI-style `tool_calls` and the schemas as `tools`. Others
    see each call as JSON text in the assistant turn and the schemas in the system turn, so the
    model still learns which tool to call and how.
    """
    tools = _parse_tools(conv.tools)
    if supports_tools(template):
        msgs = []
        for m in conv.messages:
            if m.get("tool_calls"):
                calls = [{"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                         for c in m["tool_calls"]]
                msgs.append({"role": "assistant", "content": "", "tool_calls": calls})
            else:
                msgs.append({"role": m["role"], "content": m["content"]})
        return msgs, tools
    msgs = [{"role": m["role"], "content": m["content"]} for m in conv.messages]
    if tools:
        schema = TOOLS_SYSTEM_PREAMBLE + json.dumps(tools, ensure_ascii=False)
        if msgs[0]["role"] == "system":
            msgs[0] = {"role": "system", "content": msgs[0]["content"] + "\n\n" + schema}
        else:
            msgs.insert(0, {"role": "system", "content": schema})
    return msgs, None


def _parse_tools(text: str | None) -> list[dict] | None:
    if not text:
        return None
    try:
        tools = json.loads(text)
    except json.JSONDecodeError:
        return None
    return tools if isinstance(tools, list) else [tools]


def stop_token_ids(tokenizer, template: str) -> list[int]:
    """Token ids that end an assistant turn under this template (eos plus markers the template uses)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    for marker in TURN_END_MARKERS:
        if marker in template and marker in vocab and vocab[marker] not in ids:
            ids.append(vocab[marker])
    return ids


def assistant_spans(tokenizer, template: str, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and return (text, character spans of each assistant turn incl. its end marker).

    A turn's span runs from the end of the conversation before it rendered with the generation prompt to
    the end of the conversation up to and including it. Rendering those prefixes for every turn costs
    quadratic time in the number of turns (800 turns: seconds per record), so each turn is rendered
    in a short window instead: the first message, then the few turns just before it (starting at the same
    parity, so role-alternation checks and per-index markup see what they see in the full conversation).
    The windowed pieces must concatenate to exactly the full rendering; if they do not (a template that
    looks far back or ahead), the prefix renders are done in full.
    """
    msgs, tools = template_messages(conv, template)
    text = render(tokenizer, template, msgs, tools=tools)
    spans = _windowed_spans(tokenizer, template, msgs, tools, text)
    if spans is None:
        spans = _prefix_spans(tokenizer, template, msgs, tools, text, conv)
    return text, spans


_WINDOW = 4  # turns of context before the one being rendered (an even number keeps index parity)


def _windowed_spans(tokenizer, template: str, msgs: list[dict], tools, text: str) -> list[tuple[int, int]] | None:
    """The spans `_prefix_spans` gives, computed in linear time; None when the template is not local enough."""
    def tail(window: list[dict], gen: bool) -> str | None:
        """What the last message of `window` (or the generation prompt) adds to the rendering of the rest."""
        head = render(tokenizer, template, window if gen else window[:-1], tools=tools)
        full = render(tokenizer, template, window, add_generation_prompt=True, tools=tools) if gen else \
            render(tokenizer, template, window, tools=tools)
        return full[len(head):] if full.startswith(head) else None

    try:
        first = render(tokenizer, template, msgs[:1], tools=tools)
        if not text.startswith(first):
            return None
        pos = len(first)  # end of message k-1 in the full text
        spans = [(0, pos)] if msgs[0]["role"] == "assistant" else []
        for k in range(1, len(msgs)):
            start = max(1, k - _WINDOW)
            if (start - 1) % 2:  # message k sits at the same index parity in the window as in the conversation
                start -= 1
            window = msgs[:1] + msgs[start:k]
            if msgs[k]["role"] == "assistant":
                gen = tail(window, gen=True)
                if gen is None or not text.startswith(gen, pos):
                    return None
                begin = pos + len(gen)
            piece = tail(window + [msgs[k]], gen=False)
            if piece is None or not text.startswith(piece, pos):
                return None
            if msgs[k]["role"] == "assistant":
                spans.append((begin, pos + len(piece)))
                if begin > pos + len(piece):
                    return None
            pos += len(piece)
    except Exception:  # noqa: BLE001 - a template that rejects a window; the full prefix renders decide
        return None
    return spans if pos == len(text) else None


def _prefix_spans(tokenizer, template: str, msgs: list[dict], tools, text: str,
                  conv: Conversation) -> list[tuple[int, int]]:
    """Spans by rendering every prefix in full (quadratic; the reference `_windowed_spans` must equal)."""
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix = render(tokenizer, template, msgs[:i], add_generation_prompt=True, tools=tools) if i else ""
        upto = render(tokenizer, template, msgs[: i + 1], tools=tools)
        if not (text.startswith(upto) and upto.startswith(prefix)):
            raise TemplateError(
                f"{conv.meta.get('where', 'a record')}: the chat template does not render conversations "
                f"incrementally (turn {i} changes earlier text), so the assistant's tokens cannot be located; "
                "set model.chat_template to a named template such as chatml"
            )
        spans.append((len(prefix), len(upto)))
    return spans


def tokenize_conversation(tokenizer, template: str, conv: Conversation, max_length: int) -> Tokenized:
    """Tokenize with labels on assistant turns only; truncate without ever cutting the whole response."""
    text, spans = assistant_spans(tokenizer, template, conv)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    masked = [m.span() for m in THINK_BLOCK.finditer(text)] if THINK_MASK_MARK in template else []
    for k, (start, _end) in enumerate(offsets):
        if any(s <= start < e for s, e in spans) and not any(s <= start < e for s, e in masked):
            labels[k] = ids[k]
    if not any(label != IGNORE_INDEX for label in labels):
        raise DataError(f"{conv.meta.get('where', 'a record')}: no trainable tokens after rendering (empty answer?)")
    return truncate_labeled(ids, labels, max_length)  # the one truncation rule (data/tokenize.py)


def prompt_ids(tokenizer, template: str, messages: list[dict]) -> list[int]:
    """Token ids of a prompt ending in the assistant header, ready for generation."""
    text = render(tokenizer, template, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def split_prompt_answer(tokenizer, template: str, prompt: list[dict], answer: str,
                        where: str = "a record") -> tuple[str, str]:
    """(prompt text ending in the assistant header, answer text with its end marker) under `template`.

    The answer is the rest of the rendered conversation (its text plus the template's end-of-turn marker), so
    the scored tokens are exactly those SFT trains on and chat generates.
    """
    prompt_text = render(tokenizer, template, prompt, add_generation_prompt=True)
    full = render(tokenizer, template, [*prompt, {"role": "assistant", "content": answer}])
    if not full.startswith(prompt_text):
        raise DataError(f"{where}: the chat template renders the prompt differently once an answer follows, so "
                        "the answer's tokens cannot be located; set model.chat_template to a named template "
                        "such as chatml")
    return prompt_text, full[len(prompt_text):]


def tokenize_answer(tokenizer, template: str, prompt: list[dict], answer: str, max_length: int,
                    where: str = "a record") -> Tokenized:
    """Token ids of prompt + answer with labels on the answer only (preference, KTO, label scoring)."""
    prompt_text, answer_text = split_prompt_answer(tokenizer, template, prompt, answer, where)
    return join_truncated(encode(tokenizer, prompt_text), encode(tokenizer, answer_text), max_length)

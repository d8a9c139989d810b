"""The Ollama `Modelfile` that ships beside an exported .gguf: write it, parse it, check it.

The TEMPLATE is the run's chat format written in Ollama's Go-template syntax (docs/template.mdx in
ollama/ollama): one loop over `.Messages`, each role's markup around `{{ .Content }}`, then the text that
opens the assistant's answer, as the Jinja templates in `worker.data.chat` render with
add_generation_prompt=True. The parser follows Ollama's own (parser/parser.go): instructions are case
insensitive, a value runs to the end of its line unless it opens a quote (`"` or `\"\"\"`) that a later line
closes, and quotes carry no escapes, so a value holding `\"\"\"` cannot be written at all.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

# The playground's sampling fields (app/schemas.py PlaygroundRequest) -> Ollama's PARAMETER names.
PARAMETER_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "max_new_tokens": "num_predict",
    "seed": "seed",
    "repetition_penalty": "repeat_penalty",
    "num_ctx": "num_ctx",
}
# Ollama's valid PARAMETERs and their value types (docs/modelfile.mdx); `stop` may repeat.
OLLAMA_PARAMETERS: dict[str, type] = {
    "num_ctx": int,
    "repeat_last_n": int,
    "repeat_penalty": float,
    "temperature": float,
    "seed": int,
    "stop": str,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
}
COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message")


class ModelfileError(ValueError):
    """The Modelfile cannot be written or is not one Ollama would build from the archive; says which line."""


@dataclass(frozen=True)
class ChatFormat:
    """A chat format as markup around each turn: role -> (before the content, after it).

    `{role}`, `{bos}` and `{eos}` in the markup stand for the role name and the tokenizer's tokens.
    """

    turns: dict[str, tuple[str, str]]
    generation: str  # opens the assistant's answer
    default_system: str | None = None  # written when the conversation has no system turn (Alpaca's preamble)
    stops: tuple[str, ...] = field(default=())  # markup that means the model went on past its turn


_ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
# The named formats of worker.data.chat, and `user-assistant`: the bundled tiny-llama's own template.
CHAT_FORMATS: dict[str, ChatFormat] = {
    "chatml": ChatFormat(
        {role: ("<|im_start|>" + role + "\n", "<|im_end|>\n") for role in ("system", "user", "assistant")},
        "<|im_start|>assistant\n",
        stops=("<|im_end|>", "<|im_start|>"),
    ),
    "llama-3": ChatFormat(
        {
            role: ("<|start_header_id|>" + role + "<|end_header_id|>\n\n", "<|eot_id|>")
            for role in ("system", "user", "assistant")
        },
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        stops=("<|eot_id|>", "<|start_header_id|>"),
    ),
    "zephyr": ChatFormat(
        {role: ("<|" + role + "|>\n", "{eos}\n") for role in ("system", "user", "assistant")},
        "<|assistant|>\n",
        stops=("<|user|>",),
    ),
    "alpaca": ChatFormat(
        {
            "system": ("", "\n\n"),
            "user": ("### Instruction:\n", "\n\n"),
            "assistant": ("### Response:\n", "{eos}\n\n"),
        },
        "### Response:\n",
        default_system=_ALPACA_PREAMBLE,
        stops=("### Instruction:",),
    ),
    "user-assistant": ChatFormat(
        {"system": ("<|system|>\n", "\n"), "user": ("<|user|>\n", "\n"), "assistant": ("<|assistant|>\n", "{eos}\n")},
        "<|assistant|>\n",
        stops=("<|user|>",),
    ),
    # A run on prompt/completion or text rows learned to continue the prompt as it is: no markup around it.
    "completion": ChatFormat({role: ("", "") for role in ("system", "user", "assistant")}, ""),
}


def _fill(text: str, bos: str, eos: str) -> str:
    return text.replace("{bos}", bos).replace("{eos}", eos)


def go_template(chat_format: str, *, bos_token: str | None = None, eos_token: str = "") -> str:
    """The chat format as an Ollama TEMPLATE. `bos_token` goes in front only when the GGUF does not add it
    (tokenizer.ggml.add_bos_token false): Ollama tokenizes the rendered prompt with the model's specials."""
    if chat_format not in CHAT_FORMATS:
        raise ModelfileError(f"chat format {chat_format!r} has no Ollama template; known: {', '.join(CHAT_FORMATS)}")
    spec = CHAT_FORMATS[chat_format]
    parts = [bos_token or ""]
    if spec.default_system is not None:
        parts.append("{{ if not .System }}" + spec.default_system + "\n\n{{ end }}")
    parts.append("{{ range .Messages }}")
    for index, (role, (before, after)) in enumerate(spec.turns.items()):
        keyword = "if" if index == 0 else "else if"
        parts.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{_fill(before, "", eos_token)}{{{{ .Content }}}}')
        parts.append(_fill(after, "", eos_token))
    parts.append("{{ end }}{{ end }}" + spec.generation)
    return "".join(parts)


def render_chat_format(chat_format: str, messages: list[dict[str, str]], *, eos_token: str = "") -> str:
    """What the format's Ollama template renders for `messages`, with the answer's opening after them."""
    spec = CHAT_FORMATS[chat_format]
    has_system = any(message["role"] == "system" for message in messages)
    text = spec.default_system + "\n\n" if spec.default_system is not None and not has_system else ""
    for message in messages:
        before, after = spec.turns.get(message["role"], ("", ""))
        if message["role"] in spec.turns:
            text += _fill(before, "", eos_token) + message["content"] + _fill(after, "", eos_token)
    return text + spec.generation


SAMPLE_CONVERSATIONS = [
    [{"role": "user", "content": "Hi there."}],
    [
        {"role": "user", "content": "Parse: 1 Main St"},
        {"role": "assistant", "content": '{"number": "1"}'},
        {"role": "user", "content": "Again."},
    ],
]


def identify_chat_format(
    render: Callable[[list[dict[str, str]]], str], *, bos_token: str = "", eos_token: str = ""
) -> str:
    """The format whose template renders what `render` (a Jinja chat template with add_generation_prompt, e.g.
    the tokenizer's own for a run with chat_template=auto) renders, less a leading bos; raises if none does."""
    for name in CHAT_FORMATS:
        if all(
            render(messages).removeprefix(bos_token) == render_chat_format(name, messages, eos_token=eos_token)
            for messages in SAMPLE_CONVERSATIONS
        ):
            return name
    raise ModelfileError(
        "the run's chat template matches none Ollama can be given here "
        f"({', '.join(CHAT_FORMATS)}); train with one of them (chat_template) to export a Modelfile"
    )


def _quoted(value: str, what: str) -> str:
    """A value as Ollama's parser reads it back unchanged."""
    if '"""' in value:
        raise ModelfileError(f'{what} contains """, which a Modelfile cannot quote')
    if "\n" in value or value != value.strip() or value.startswith('"'):
        return '"""' + value + '"""'
    return value


def modelfile_text(
    gguf_name: str,
    chat_format: str,
    stop_tokens: list[str],
    parameters: Mapping[str, float | int],
    *,
    bos_token: str | None = None,
    eos_token: str = "",
    system: str | None = None,
) -> str:
    """A Modelfile for `ollama create NAME -f Modelfile` in the folder that holds `gguf_name`.

    `parameters` are the playground's sampling fields (temperature, top_p, max_new_tokens, ...); stop
    sequences are the run's end-of-turn tokens and whatever markup shows the model went past its turn.
    """
    if posixpath.basename(gguf_name) != gguf_name or not gguf_name.endswith(".gguf"):
        raise ModelfileError(f"FROM must name a .gguf file beside the Modelfile, not {gguf_name!r}")
    unknown = sorted(set(parameters) - set(PARAMETER_NAMES))
    if unknown:
        raise ModelfileError(f"no Ollama parameter for {', '.join(unknown)}; known: {', '.join(PARAMETER_NAMES)}")
    template = go_template(chat_format, bos_token=bos_token, eos_token=eos_token)
    lines = [
        "# Ollama: ollama create <name> -f Modelfile  (written by loradeck)",
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_quoted(template, 'the template')}",
    ]
    if system:
        lines.append(f"SYSTEM {_quoted(system, 'the system prompt')}")
    stops = list(dict.fromkeys([*stop_tokens, *CHAT_FORMATS[chat_format].stops]))
    lines += [f"PARAMETER stop {_quoted(stop, 'a stop sequence')}" for stop in stops if stop]
    for name, value in parameters.items():
        ollama_name = PARAMETER_NAMES[name]
        number = OLLAMA_PARAMETERS[ollama_name](value)
        lines.append(f"PARAMETER {ollama_name} {number}")
    return "\n".join(lines) + "\n"


def _unquote(value: str) -> tuple[str, bool]:
    if value.startswith('"""'):
        return (value[3:-3], True) if len(value) >= 6 and value.endswith('"""') else ("", False)
    if value.startswith('"'):
        return (value[1:-1], True) if len(value) >= 2 and value.endswith('"') else ("", False)
    return value, True


def _next_state(char: str, state: str) -> tuple[str, str]:
    """Ollama's parseRuneForState: the state after `char`, and what of it goes into the buffer ('' for nothing)."""
    space, newline = char in " \t", char in "\r\n"
    if state == "nil":
        return ("comment", "") if char == "#" else ("nil", "") if space or newline else ("name", char)
    if state == "comment":
        return ("nil", "") if newline else ("comment", "")
    if state == "value":
        return ("nil", char) if space or newline else ("value", char)
    word_char = char.isascii() and (char.isalpha() or (state == "parameter" and (char.isdigit() or char == "_")))
    if word_char:
        return state, char
    if space:
        return "value", ""
    raise ModelfileError("an instruction name is followed by a space, then its value")


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(instruction, value) pairs as Ollama's parser reads them: FROM x -> ("model", x), PARAMETER stop x ->
    ("stop", x), MESSAGE user hi -> ("message", "user: hi"). Raises ModelfileError naming the line."""
    commands: list[tuple[str, str]] = []
    state, name, role, line = "nil", "", "", 1
    buffer: list[str] = []
    for char in text:
        line += char == "\n"
        try:
            following, kept = _next_state(char, state)
        except ModelfileError as exc:
            raise ModelfileError(f"line {line}: {exc}") from None
        if following != state:
            word = "".join(buffer)
            if state == "name":
                if word.lower() not in COMMANDS:
                    raise ModelfileError(
                        f"line {line}: {word!r} is not an instruction; use one of {', '.join(COMMANDS)}"
                    )
                name = "model" if word.lower() == "from" else word.lower()
                following = {"parameter": "parameter", "message": "message"}.get(name, following)
            elif state == "parameter":
                name = word
            elif state == "message":
                if word not in ("system", "user", "assistant"):
                    raise ModelfileError(f"line {line}: MESSAGE role must be system, user or assistant, not {word!r}")
                role = word
            elif state == "value":
                value, closed = _unquote(word.strip())
                if not closed or char in " \t":  # inside an open quote, or a space within the value
                    buffer.append(char)
                    continue
                commands.append((name, f"{role}: {value}" if role else value))
                role = ""
            buffer, state = [], following
        if kept and kept.isprintable():
            buffer.append(kept)
    if state == "value":
        value, closed = _unquote("".join(buffer).strip())
        if not closed:
            raise ModelfileError(f"line {line}: a quote opened in the last instruction is never closed")
        commands.append((name, f"{role}: {value}" if role else value))
    elif state not in ("nil", "comment"):
        raise ModelfileError(f"line {line}: the last instruction has no value")
    if not any(command == "model" for command, _ in commands):
        raise ModelfileError("no FROM line: Ollama needs FROM ./<file>.gguf")
    return commands


def validate_modelfile(text: str, archive_names: Collection[str]) -> list[tuple[str, str]]:
    """Parse the Modelfile and check what `ollama create` in the unpacked archive needs: one FROM that names a
    .gguf in the archive by a relative path, a TEMPLATE, and PARAMETERs Ollama knows with values of their type."""
    commands = parse_modelfile(text)
    froms = [value for name, value in commands if name == "model"]
    if len(froms) != 1:
        raise ModelfileError(f"a Modelfile needs exactly one FROM line; this one has {len(froms)}")
    path = froms[0]
    normal = posixpath.normpath(path)
    if posixpath.isabs(path) or path.startswith("~") or normal.startswith(".."):
        raise ModelfileError(f"FROM {path} points outside the archive; write FROM ./<file>.gguf")
    if normal not in archive_names or not normal.endswith(".gguf"):
        raise ModelfileError(f"FROM {path}: the archive has no such .gguf (it has {', '.join(sorted(archive_names))})")
    if not any(name == "template" for name, _ in commands):
        raise ModelfileError("no TEMPLATE: Ollama would send prompts without the run's chat format")
    for name, value in commands:
        if name in ("model", "template", "system", "license", "message", "adapter", "draft", "renderer", "parser"):
            continue
        if name not in OLLAMA_PARAMETERS:
            raise ModelfileError(f"PARAMETER {name} is not an Ollama parameter; known: {', '.join(OLLAMA_PARAMETERS)}")
        try:
            OLLAMA_PARAMETERS[name](value)
        except ValueError:
            kind = OLLAMA_PARAMETERS[name].__name__
            raise ModelfileError(f"PARAMETER {name} {value}: Ollama expects an {kind}") from None
    return commands

"""GGUF export: the bundled model as the "merged model", converted by llama.cpp's converter, loaded by llama.cpp,
and held to transformers' token ids and logits; and the Ollama Modelfile beside it.

The export tests need llama-cpp-python and the converter fetched for it (`make gguf`); they carry the marker `gguf`
(tests/conftest.py), which `make test` runs once llama.cpp is built and `make quick` leaves out. The Modelfile tests
need neither.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from worker.data.chat import CHATML
from worker.export import (
    ExportError,
    ModelfileError,
    check_gguf,
    convert_to_gguf,
    modelfile_text,
    parse_modelfile,
    validate_modelfile,
)
from worker.export.modelfile import CHAT_FORMATS, go_template, identify_chat_format, render_chat_format
from worker.export.pretokenizer import LLAMA3, effective_pre_tokenizer, llama_cpp_pre_tokenizer

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "assets" / "tiny-llama"
EVAL_ROWS = REPO / "assets" / "datasets" / "tw-address" / "eval.jsonl"
# What a user runs through an exported model: the task's own prompts, plus text that crosses the pre-tokenizer's
# seams (Han next to Latin letters and digits, spaces before Han, full-width punctuation).
EXTRA_PROMPTS = ['Parse: 台北市 apple工作1314151天 {"floor": "3樓"}，好。']


def _prompts(count: int = 8) -> list[str]:
    rows = [json.loads(line) for line in EVAL_ROWS.read_text(encoding="utf-8").splitlines()[:count]]
    return [row["prompt"] + row["completion"] for row in rows] + EXTRA_PROMPTS


Exported = tuple[Path, dict[str, Any], list[tuple[int, int]]]


def _recorder(seen: list[tuple[int, int]]) -> Callable[[int, int], None]:
    return lambda done, total: seen.append((done, total))


@pytest.fixture(scope="module")
def exports(exporter: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    """Each type exported once (a conversion takes ~8 s, mostly the converter's imports), shared by the tests."""
    made: dict[str, Exported] = {}
    folder = tmp_path_factory.mktemp("gguf")
    for gguf_type in ("f16", "q8_0", "q4_k_m"):
        seen: list[tuple[int, int]] = []
        out = folder / f"tiny-llama-{gguf_type}.gguf"
        # q8_0 carries the run's chat format (a named one) in place of the tokenizer's own template.
        template = CHATML if gguf_type == "q8_0" else None
        report = convert_to_gguf(TINY, out, gguf_type, progress=_recorder(seen), chat_template=template)
        made[gguf_type] = (out, report, seen)
    return made


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_export_loads_in_llama_cpp_and_matches_transformers(exports: dict[str, Exported], gguf_type: str) -> None:
    out, report, seen = exports[gguf_type]
    assert out.is_file() and report["bytes"] == out.stat().st_size
    assert not list(out.parent.glob("*.partial")), "no half-written file is left beside the export"
    # 4 layers x 9 tensors + embeddings, final norm and head: every tensor of the model is in the file.
    assert report["tensors"] == 39
    weight_type = {"f16": "F16", "q8_0": "Q8_0"}[gguf_type]
    assert report["tensor_types"] == {"F32": 9, weight_type: 30}  # norms stay F32, as llama.cpp wants them
    assert report["pre_tokenizer"] == "starcoder" and report["has_chat_template"]
    assert seen[-1] == (39, 39) and [done for done, _ in seen] == sorted(done for done, _ in seen)
    from gguf import GGUFReader

    embedded = GGUFReader(out).get_field("tokenizer.chat_template")
    expected = CHATML if gguf_type == "q8_0" else (TINY / "chat_template.jinja").read_text()
    assert embedded is not None and embedded.contents() == expected

    result = check_gguf(out, TINY, _prompts(), gguf_type)
    assert result["tokens_same"], result["tokens"]
    assert result["max_rel_logit_diff"] <= result["tolerance"], result
    # In logits: f16 rounding of the weights alone moves them by up to 1e-2 here (measured in transformers).
    assert result["max_abs_logit_diff"] < {"f16": 0.03, "q8_0": 1.0}[gguf_type]
    assert result["top1_agreement"] > 0.98 and result["passed"]


def test_a_long_prompt_is_judged_on_its_first_positions_only(exports: dict[str, Exported]) -> None:
    """A row far longer than the check needs (here beyond the model's 512 positions): its ids are still compared
    whole, its logits on the first CHECK_TOKENS only, so the check's memory does not grow with the data."""
    from worker.export.gguf_check import CHECK_TOKENS

    out, _, _ = exports["f16"]
    long_row = " ".join(_prompts(8)) * 8
    result = check_gguf(out, TINY, [long_row, EXTRA_PROMPTS[0]], "f16")
    assert result["tokens"][0]["hf"] > 512 and result["tokens_same"], result["tokens"]
    assert CHECK_TOKENS < result["positions"] <= CHECK_TOKENS + result["tokens"][1]["hf"], result
    assert result["passed"], result


def test_q4_k_m_export_keeps_the_greedy_answer(exports: dict[str, Exported]) -> None:
    out, report, _ = exports["q4_k_m"]
    # Rows of 192 values are not whole 256-value k-quant blocks: llama.cpp falls back to a 32-block type there.
    assert set(report["tensor_types"]) - {"F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "Q5_1"} == set()
    assert report["tensor_types"].get("Q4_K", 0) > 0, report["tensor_types"]  # 4-bit k-quants where rows allow
    prompts = [json.loads(line)["prompt"] for line in EVAL_ROWS.read_text(encoding="utf-8").splitlines()[:4]]
    result = check_gguf(out, TINY, prompts, "q4_k_m")
    assert result["tokens_same"] and result["passed"], result
    assert result["greedy_agreement"] >= result["threshold"]


def test_a_wrong_file_fails_the_check(exports: dict[str, Exported], tmp_path: Path) -> None:
    """The check must be able to fail: the bundled model's GGUF judged against another model's weights."""
    out, _, _ = exports["f16"]
    other = tmp_path / "other"
    other.mkdir()
    for name in TINY.iterdir():
        if name.name != "model.safetensors":
            (other / name.name).write_bytes(name.read_bytes())
    from safetensors.torch import load_file, save_file

    tensors = load_file(TINY / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 1.05
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    result = check_gguf(out, other, _prompts(2), "f16")
    assert result["tokens_same"] and not result["passed"]
    assert result["max_rel_logit_diff"] > result["tolerance"]


def test_a_cancelled_export_leaves_no_file(exporter: None, tmp_path: Path) -> None:
    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        if done >= 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        convert_to_gguf(TINY, tmp_path / "x.gguf", "f16", progress=cancel)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ExportError, match=r"GPT2LMHeadModel.*Llama \(LlamaForCausalLM\).*Qwen2"):
        convert_to_gguf(tmp_path, tmp_path / "x.gguf", "f16")
    with pytest.raises(ExportError, match="q4_k_m"):
        convert_to_gguf(TINY, tmp_path / "x.gguf", "q3_k")


def test_pre_tokenizer_is_named_from_the_split_rules() -> None:
    assert llama_cpp_pre_tokenizer(effective_pre_tokenizer(TINY)) == "starcoder"
    assert llama_cpp_pre_tokenizer({"type": "ByteLevel", "use_regex": True}) == "gpt-2"
    llama3 = {"type": "Split", "pattern": {"Regex": LLAMA3}, "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
    assert llama_cpp_pre_tokenizer({"type": "Sequence", "pretokenizers": [llama3, byte_level]}) == "llama-bpe"
    assert llama_cpp_pre_tokenizer({"type": "Metaspace"}) is None
    assert llama_cpp_pre_tokenizer({"type": "ByteLevel", "add_prefix_space": True}) is None


# --- Ollama Modelfile ------------------------------------------------------------------------------------------

PLAYGROUND = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 128, "seed": 0}


def test_modelfile_parses_and_points_at_the_gguf_in_the_archive() -> None:
    text = modelfile_text("tiny-llama-q8_0.gguf", "user-assistant", ["</s>"], PLAYGROUND, eos_token="</s>")
    commands = validate_modelfile(text, {"tiny-llama-q8_0.gguf", "Modelfile"})
    assert commands[0] == ("model", "./tiny-llama-q8_0.gguf")
    assert ("stop", "</s>") in commands and ("num_predict", "128") in commands and ("temperature", "0.0") in commands
    template = dict(commands)["template"]
    assert template == go_template("user-assistant", eos_token="</s>")

    with pytest.raises(ModelfileError, match="no such .gguf"):
        validate_modelfile(text, {"other.gguf"})
    for bad_from in ("/root/x.gguf", "../x.gguf", "~/x.gguf"):
        with pytest.raises(ModelfileError, match="outside the archive"):
            validate_modelfile(text.replace("./tiny-llama-q8_0.gguf", bad_from), {"x.gguf"})
    with pytest.raises(ModelfileError, match="top_q is not an Ollama parameter"):
        validate_modelfile(text + "PARAMETER top_q 1\n", {"tiny-llama-q8_0.gguf"})
    with pytest.raises(ModelfileError, match="num_predict many: Ollama expects an int"):
        validate_modelfile(text + "PARAMETER num_predict many\n", {"tiny-llama-q8_0.gguf"})
    with pytest.raises(ModelfileError, match="never closed"):
        parse_modelfile('FROM ./a.gguf\nTEMPLATE """{{ .Prompt }}\n')
    with pytest.raises(ModelfileError, match="Ollama parameter for max_tokens"):
        modelfile_text("a.gguf", "chatml", [], {"max_tokens": 5})
    with pytest.raises(ModelfileError, match="beside the Modelfile"):
        modelfile_text("../a.gguf", "chatml", [], {})


def test_parser_reads_values_as_ollama_does() -> None:
    text = '# c\nfrom ./a.gguf\nPARAMETER stop "<|im_end|>"\nSYSTEM """ two\nlines """\nMESSAGE user hi there\n'
    assert parse_modelfile(text) == [
        ("model", "./a.gguf"),
        ("stop", "<|im_end|>"),
        ("system", " two\nlines "),
        ("message", "user: hi there"),
    ]


ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}")


def _go_parse(pieces: list[str], at: int = 0) -> tuple[list[Any], int, str]:
    """Nodes up to the next end / else (if): text, ("field", name), ("range", body), ("if", [(cond, body)...])."""
    nodes: list[Any] = []
    while at < len(pieces):
        piece, at = pieces[at], at + 1
        action = ACTION.fullmatch(piece)
        if not action:
            nodes.append(piece)
            continue
        words = action.group(1)
        if words == "end" or words.startswith("else"):
            return nodes, at, words
        if words == "range .Messages":
            body, at, _ = _go_parse(pieces, at)
            nodes.append(("range", body))
        elif words.startswith("if "):
            branches, condition = [], words[3:]
            while True:
                body, at, stop = _go_parse(pieces, at)
                branches.append((condition, body))
                if stop == "end":
                    break
                condition = stop[8:] if stop.startswith("else if ") else "true"
            nodes.append(("if", branches))
        elif words in (".Content", ".Role", ".System"):
            nodes.append(("field", words[1:]))
        else:
            raise AssertionError(f"go_template wrote an action this test cannot render: {words}")
    return nodes, at, ""


def _go_render(template: str, messages: list[dict[str, str]]) -> str:
    """Ollama's rendering of the Go-template constructs go_template writes. As Ollama does (template.go
    collate), system turns stay in .Messages and are also joined into .System."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    nodes, _, _ = _go_parse(re.split(r"({{-?\s*.*?\s*-?}})", template))

    def holds(condition: str, message: dict[str, str] | None) -> bool:
        role = re.fullmatch(r'eq \.Role "(\w+)"', condition)
        if role:
            return message is not None and message["role"] == role.group(1)
        return {"true": True, ".System": bool(system), "not .System": not system}[condition]

    def render(nodes: list[Any], message: dict[str, str] | None) -> str:
        out = []
        for node in nodes:
            if isinstance(node, str):
                out.append(node)
            elif node[0] == "field":
                out.append(system if node[1] == "System" else message[node[1].lower()] if message else "")
            elif node[0] == "range":
                out += [render(node[1], item) for item in messages]
            else:
                out.append(next((render(body, message) for cond, body in node[1] if holds(cond, message)), ""))
        return "".join(out)

    return render(nodes, None)


@pytest.mark.parametrize("chat_format", sorted(set(CHAT_FORMATS) - {"completion"}))
def test_ollama_template_renders_what_the_run_trained_on(chat_format: str) -> None:
    """The Go template gives the text the Jinja template gives with add_generation_prompt (less the bos token,
    which the GGUF's tokenizer adds: tokenizer.ggml.add_bos_token)."""
    from transformers import AutoTokenizer

    from worker.data.chat import NAMED_TEMPLATES, render_chat

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    jinja = NAMED_TEMPLATES.get(chat_format) or (TINY / "chat_template.jinja").read_text()
    conversations = [
        [{"role": "user", "content": "解析地址：臺北市大安區復興南路一段390號2樓"}],
        [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": '{"a": 1}'},
            {"role": "user", "content": "again"},
        ],
    ]
    template = go_template(chat_format, eos_token=tokenizer.eos_token)
    for messages in conversations:
        expected = render_chat(tokenizer, jinja, messages, add_generation_prompt=True)
        assert expected.startswith(tokenizer.bos_token)
        rendered = _go_render(template, messages)
        assert rendered == expected[len(tokenizer.bos_token) :]
        assert render_chat_format(chat_format, messages, eos_token=tokenizer.eos_token) == rendered

    # A run with chat_template=auto trained on the tokenizer's own template: the export finds its format.
    def render(messages: list[dict[str, str]]) -> str:
        return render_chat(tokenizer, jinja, messages, add_generation_prompt=True)

    found = identify_chat_format(render, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
    assert found == chat_format


def test_a_chat_template_ollama_cannot_be_given_is_refused() -> None:
    from transformers import AutoTokenizer

    from worker.data.chat import CHATML, render_chat

    # ChatML with a default system turn when the conversation has none (as Qwen2.5's): no format here writes that.
    qwen = "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nBe helpful.<|im_end|>\\n' }}{% endif %}"
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    with pytest.raises(ModelfileError, match="matches none Ollama can be given"):
        identify_chat_format(lambda m: render_chat(tokenizer, qwen + CHATML, m, add_generation_prompt=True))


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_each_bpe_family_exports_as_q8_0_and_passes_its_check(
    exporter: None, family: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The family matrix's shapes llama.cpp reads from tokenizer.json: converted with no family code of ours,
    the pre-tokenizer found (Qwen2's own regex for qwen2), ids and logits held to transformers."""
    from tests.worker.families import CORPUS, build_family

    model = build_family(family, tmp_path_factory.mktemp(family))
    out = model.parent / f"{family}-q8_0.gguf"
    report = convert_to_gguf(model, out, "q8_0")
    check = check_gguf(out, model, [*CORPUS[:4], *EXTRA_PROMPTS], "q8_0")
    assert check["tokens_same"], check["tokens"]
    assert check["passed"] and check["max_rel_logit_diff"] <= check["tolerance"], check
    assert report["pre_tokenizer"] == ("qwen2" if family == "qwen2" else "gpt-2"), report


@pytest.mark.parametrize("family", ["gemma2", "phi3", "mistral"])
def test_each_sentencepiece_family_exports_as_q8_0_and_passes_its_check(
    exporter: None, family: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Gemma 2, Phi-3 and Mistral as their checkpoints ship them, with a SentencePiece tokenizer.model (llama.cpp's
    converter reads their vocabulary from it): Gemma's soft-capping and scaled tied embeddings, Phi-3's fused
    projections, converted with no family code of ours; ids and logits held to transformers."""
    from tests.worker.families import CORPUS, build_family

    model = build_family(family, tmp_path_factory.mktemp(family), sentencepiece=True)
    out = model.parent / f"{family}-q8_0.gguf"
    convert_to_gguf(model, out, "q8_0")
    check = check_gguf(out, model, [*CORPUS[:4], *EXTRA_PROMPTS], "q8_0")
    assert check["tokens_same"], check["tokens"]
    assert check["passed"] and check["max_rel_logit_diff"] <= check["tolerance"], check


def test_a_sentencepiece_family_without_its_tokenizer_model_is_refused(
    exporter: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A Gemma 2 folder with only tokenizer.json: the converter cannot read its vocabulary, and says what is missing."""
    from tests.worker.families import build_family

    model = build_family("gemma2", tmp_path_factory.mktemp("gemma2-bare"), sentencepiece=True)
    (model / "tokenizer.model").unlink()
    with pytest.raises(ExportError, match="tokenizer.model"):
        convert_to_gguf(model, model.parent / "gemma2.gguf", "q8_0")


def test_the_modelfile_prompts_as_the_run_trained(tmp_path: Path) -> None:
    """Prompt/completion rows: the prompt as it is. Messages rows: the template training resolved, `auto` being
    the tokenizer's own (the bundled one's) or chatml for a tokenizer without one, embedded in the file then."""
    import shutil

    from app.schemas import RunSpec
    from worker.export.job import chat_format_of

    data = Path(__file__).parent / "data"
    spec = RunSpec(base_model=str(TINY), dataset=str(data / "pc.jsonl"))
    assert chat_format_of(spec, TINY) == ("completion", None)
    chat = spec.model_copy(update={"dataset": str(data / "chat.jsonl")})
    assert chat_format_of(chat, TINY) == ("user-assistant", None)
    assert chat_format_of(chat.model_copy(update={"chat_template": "zephyr"}), TINY)[0] == "zephyr"
    bare = tmp_path / "no-template"
    shutil.copytree(TINY, bare)
    (bare / "chat_template.jinja").unlink()
    assert chat_format_of(chat, bare) == ("chatml", CHATML)


def test_a_completion_run_is_prompted_with_the_text_alone() -> None:
    """Training on prompt/completion rows saw the prompt with no markup, so Ollama must send just that."""
    prompt = "解析地址：臺北市大安區復興南路一段390號2樓\n"
    template = go_template("completion", eos_token="</s>")
    assert _go_render(template, [{"role": "user", "content": prompt}]) == prompt
    assert render_chat_format("completion", [{"role": "user", "content": prompt}]) == prompt

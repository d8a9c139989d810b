"""Build the bundled tiny base model: a ~3M-parameter Llama that trains in seconds on a CPU.

    python -m tools.tiny_model --out assets/tiny-llama

Steps: train a byte-level BPE tokenizer on the pretraining texts (the corpus of assets/corpus/*.txt plus
generated documents that mention addresses as plain text, none in the task's format), one token per Han
character and per digit; pack those texts with copy sequences (a random span, then the same span again);
initialise a small LlamaForCausalLM from a seed, pretrain it, and save a standard Hugging Face directory.
Everything is seeded, so the same seed, thread count and machine give the same bytes. The default
schedule takes a quarter of an hour on 2 CPU cores; `--steps` shortens it (the tests build with 3).

The model knows the characters, the place names and JSON, and copying from its context, but has never
seen the sample task (`解析地址：<address>` followed by its eight-field JSON): that mapping is what a LoRA
run teaches it. Neither the model nor the tokenizer reads a task row.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tools.sample_data import FIELDS, PROMPT_PREFIX, dataset_splits, format_address, random_fields

CORPUS_DIR = Path(__file__).resolve().parent.parent / "assets" / "corpus"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [PAD, BOS, EOS]  # ids 0, 1, 2: the trainer puts them first, in this order
VOCAB_SIZE = 3000
# A seed other than the sample dataset's, and dataset addresses are dropped, so eval stays unseen.
CORPUS_ADDRESS_SEED = 20240
CORPUS_ADDRESS_DOCS = 6000  # generated documents that mention addresses as plain text
# CJK ideographs (with extension A and the compatibility block): the tokenizer keeps each one a token of its own.
HAN_CHARACTER = "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
# Copy sequences: a span of random tokens, a newline, the same span again. Training on them forms the
# attention circuit that finds a token seen before and predicts what followed it ("induction"), which is
# what an answer that copies parts of its prompt needs; a model this small does not form it from prose.
COPY_SHARE = 0.2  # of the packed tokens
COPY_SPAN = (6, 40)  # tokens in the repeated span
# Of the plain generated documents: JSON records using some of the task's keys, text -> JSON extractions
# of other shapes, and the rest lists, sentences and JSON that mention addresses.
RECORD_SHARE = 0.3
EXTRACTION_SHARE = 0.15
PARTS_SHARE = 0.35  # an address, then some of its parts copied out (never the task's eight-key JSON)
CHAT_EVERY = 4  # one generated document in four is a chat, so the template's markers are familiar

# Plain-text role markers (no extra special tokens): <|user|>\n...\n<|assistant|>\n...</s>\n
# Newlines are quoted strings so Jinja's trim_blocks/lstrip_blocks settings cannot change the output.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

SEQ_LEN = 128
BATCH_SIZE = 16
DEFAULT_STEPS = 2400
LEARNING_RATE = 3e-3
WARMUP_STEPS = 20


def render_chat(messages: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    """CHAT_TEMPLATE rendered the way transformers' apply_chat_template renders it."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE).render(
        messages=messages, bos_token=BOS, eos_token=EOS, add_generation_prompt=add_generation_prompt
    )


_NAMES = ["王小明", "林美玲", "陳志豪", "張雅婷", "李建宏", "黃淑芬", "吳家豪", "劉怡君", "蔡宗翰", "許文傑"]
_PLACES = ["豆漿店", "咖啡店", "書店", "麵包店", "文具店", "診所", "花店", "郵局", "圖書館", "工作室"]
_LIST_HEADERS = ["收件地址：", "本週配送：", "門市地址：", "Addresses on file:", "Stops for today:"]
_SENTENCES = [
    "{name}住在{a}。",
    "包裹已經寄到{a}，請{name}查收。",
    "我們的{place}搬到{a}了，歡迎來坐坐。",
    "{name}把地址寫成{a}，郵差一次就找到了。",
    "下週的讀書會改在{a}舉行，{name}會先到。",
    "從{a}走到{b}大約要十五分鐘。",
    "{name}的新{place}開在{a}，旁邊就是{b}。",
    "The {place_en} moved to {a} last spring.",
    "Please send the order to {a}; {name} will sign for it.",
    "We met at {a}, then walked to {b}.",
]
_PLACES_EN = ["bakery", "bookshop", "clinic", "office", "tea shop", "studio"]


def corpus_texts(corpus_dir: Path = CORPUS_DIR) -> list[str]:
    """The hand-written paragraphs of corpus_dir/*.txt, one document each."""
    documents: list[str] = []
    for path in sorted(corpus_dir.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        documents += [part.strip() for part in text.split("\n\n") if part.strip()]
    return documents


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _phone(rng: random.Random) -> str:
    return f"0{rng.randint(2, 8)}-{rng.randint(2000, 9999)}-{rng.randint(1000, 9999)}"


def _address_document(rng: random.Random, draw: list[str]) -> str:
    """One plain document that mentions addresses: a list, a sentence, or a JSON record of some other
    shape than the sample task's. `draw` holds the addresses to use, first ones first."""
    a, b = draw[0], draw[1]
    name, place = rng.choice(_NAMES), rng.choice(_PLACES)
    kind = rng.randrange(8)
    if kind == 0:
        lines = [f"{i}. {address}" for i, address in enumerate(draw[: rng.randint(2, 5)], start=1)]
        return "\n".join([rng.choice(_LIST_HEADERS), *lines])
    if kind in (1, 2):
        template = rng.choice(_SENTENCES)
        return template.format(name=name, place=place, place_en=rng.choice(_PLACES_EN), a=a, b=b)
    if kind == 3:
        return _compact({"name": name, "phone": _phone(rng), "address": a})
    if kind == 4:
        order = {"order": rng.randint(1000, 9999), "ship_to": a, "items": rng.randint(1, 6)}
        return _compact({**order, "paid": rng.random() < 0.7})
    if kind == 5:
        return _compact({"store": name[0] + "記" + place, "address": a, "open": f"{rng.randint(7, 11):02d}:00"})
    if kind == 6:
        return _compact({"from": a, "to": b, "km": round(rng.uniform(0.5, 40.0), 1)})
    # A sentence, then the same facts as JSON: the model learns to carry text over into a value.
    return f"{name}住在{a}，電話是{(phone := _phone(rng))}。\n" + _compact({"name": name, "phone": phone, "address": a})


def _address_chat(rng: random.Random, draw: list[str]) -> str:
    a, name = draw[0], rng.choice(_NAMES)
    kind = rng.randrange(3)
    if kind == 0:
        user, assistant = f"請把這個地址再寫一次：{a}", a
    elif kind == 1:
        phone = _phone(rng)
        user = f"把這筆聯絡人寫成 JSON：{name}，電話 {phone}，地址 {a}"
        assistant = _compact({"name": name, "phone": phone, "address": a})
    else:
        user, assistant = f"幫我寫一句寄件通知，地址是{a}", f"您的包裹已經寄出，收件地址是{a}，請留意簽收。"
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return render_chat(messages)


def _record_document(rng: random.Random, fields: dict[str, str | None]) -> str:
    """A JSON record that uses a few of the sample task's keys next to keys of its own, with values from
    one address's parts (null where the part is absent), but never the whole address: the model learns
    the words and the JSON, not how an address splits into them."""
    f, name = fields, rng.choice(_NAMES)
    kind = rng.randrange(6)
    if kind == 0:
        phone = _phone(rng) if rng.random() < 0.7 else None
        return _compact({"name": name, "city": f["city"], "district": f["district"], "phone": phone})
    if kind == 1:
        km = round(rng.uniform(0.5, 12.0), 1)
        return _compact({"city": f["city"], "district": f["district"], "road": f["road"], "length_km": km})
    if kind == 2:
        building = {"building": name[0] + "氏大樓", "number": f["number"], "floor": f["floor"]}
        return _compact({**building, "elevator": rng.random() < 0.6})
    if kind == 3:
        return _compact({"road": f["road"], "lane": f["lane"], "alley": f["alley"], "parking": rng.random() < 0.5})
    if kind == 4:
        return _compact({"city": f["city"], "district": f["district"], "shops": rng.randint(3, 300)})
    road = {"road": f["road"], "section": f["section"], "lanes": rng.choice([2, 4, 6])}
    return _compact({**road, "one_way": rng.random() < 0.2})


_EXTRACT_PROMPTS = ["整理成 JSON：", "轉成 JSON：", "擷取欄位：", "Extract as JSON: "]
_ITEMS = ["茶葉", "杯子", "筆記本", "雨傘", "鳳梨酥", "咖啡豆", "毛巾", "便當盒"]
_EVENTS = ["讀書會", "音樂會", "市集", "講座", "跑步社練習", "攝影展"]
_WEATHER = ["晴", "多雲", "陣雨", "多雲時晴", "午後雷陣雨", "陰"]


def _extraction_document(rng: random.Random, fields: dict[str, str | None], address: str) -> str:
    """An instruction, a line of text, then the text's facts as JSON, in the order the text gives them
    (null for what it leaves out): extraction in general, in other shapes than the sample task's."""
    name = rng.choice(_NAMES)
    date = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    clock = f"{rng.randint(8, 21)}:{rng.choice(['00', '15', '30', '45'])}"
    phone = _phone(rng) if rng.random() < 0.75 else None
    data: dict[str, object]
    kind = rng.randrange(5)
    if kind == 0:
        text = f"{name}，電話 {phone}，住在{address}" if phone else f"{name}，住在{address}"
        data = {"name": name, "phone": phone, "address": address}
    elif kind == 1:
        order, item, qty = rng.randint(1000, 9999), rng.choice(_ITEMS), rng.randint(1, 12)
        text = f"訂單 {order}：{item} {qty} 份，寄到{address}"
        data = {"order": order, "item": item, "qty": qty, "ship_to": address}
    elif kind == 2:
        event = rng.choice(_EVENTS)
        text = f"{event}在{date} {clock}，地點：{address}"
        data = {"event": event, "date": date, "time": clock, "place": address}
    elif kind == 3:
        weather, degrees = rng.choice(_WEATHER), rng.randint(8, 36)
        text = f"{date}，{fields['city']}{weather}，氣溫 {degrees} 度"
        data = {"date": date, "city": fields["city"], "weather": weather, "temperature": degrees}
    else:
        people = rng.randint(1, 12)
        text = f"{name}訂位 {people} 人，{date} {clock}" + (f"，電話 {phone}" if phone else "")
        data = {"name": name, "people": people, "date": date, "time": clock, "phone": phone}
    return f"{rng.choice(_EXTRACT_PROMPTS)}{text}\n{_compact(data)}"


_PART_NAMES = {
    "city": "縣市",
    "district": "鄉鎮市區",
    "road": "路街",
    "section": "段",
    "lane": "巷",
    "alley": "弄",
    "number": "門牌",
    "floor": "樓層",
}


def _parts_document(rng: random.Random, fields: dict[str, str | None]) -> str:
    """An address as text, then some of its parts copied out of it, in order: as a list, a sentence, or a
    JSON object of at most four of the task's keys. Copying spans out of a text is what the task needs;
    the task's own answer (all eight keys, nulls included) never appears."""
    address = format_address(fields)
    present = [name for name in FIELDS if fields[name]]
    chosen = sorted(rng.sample(present, k=min(len(present), rng.randint(2, 4))), key=FIELDS.index)
    kind = rng.randrange(3)
    if kind == 0:
        parts = "\n".join(f"{_PART_NAMES[name]}：{fields[name]}" for name in chosen)
        return f"地址：{address}\n{parts}"
    if kind == 1:
        return f"{address}，" + "，".join(f"{_PART_NAMES[name]}是{fields[name]}" for name in chosen) + "。"
    return f"{address}\n" + _compact({name: fields[name] for name in chosen})


def _dataset_addresses() -> set[str]:
    train, eval_ = dataset_splits()
    return {row["prompt"].removeprefix(PROMPT_PREFIX).rstrip("\n") for row in train + eval_}


def address_documents(n: int = CORPUS_ADDRESS_DOCS, *, seed: int = CORPUS_ADDRESS_SEED) -> list[str]:
    """n generated documents that use addresses as plain text, never as the sample task's rows.
    Addresses of the tw-address sample dataset are left out, so its eval rows stay unseen."""
    dataset_addresses = _dataset_addresses()
    rng = random.Random(seed)

    def address_fields() -> dict[str, str | None]:
        while format_address(fields := random_fields(rng)) in dataset_addresses:
            pass
        return fields

    def address() -> str:
        return format_address(address_fields())

    documents: list[str] = []
    for i in range(n):
        draw = [address() for _ in range(5)]
        roll = rng.random()
        if i % CHAT_EVERY == 0:
            documents.append(_address_chat(rng, draw))
        elif roll < RECORD_SHARE:
            documents.append(_record_document(rng, random_fields(rng)))
        elif roll < RECORD_SHARE + EXTRACTION_SHARE:
            documents.append(_extraction_document(rng, random_fields(rng), draw[0]))
        elif roll < RECORD_SHARE + EXTRACTION_SHARE + PARTS_SHARE:
            documents.append(_parts_document(rng, address_fields()))
        else:
            documents.append(_address_document(rng, draw))
    return documents


def holds_the_task(document: str) -> bool:
    """Whether a document holds the sample task: its prompt, or a JSON object with its eight keys."""
    return PROMPT_PREFIX in document or all(f'"{field}":' in document for field in FIELDS)


def check_pretraining_texts(documents: list[str]) -> None:
    """ValueError if a document holds the sample task (see holds_the_task)."""
    for doc in documents:
        if holds_the_task(doc):
            raise ValueError(f"pretraining text holds the sample task (prompt or eight-key JSON): {doc[:80]!r}")


def pretraining_texts(corpus_dir: Path = CORPUS_DIR) -> list[str]:
    """What the model is pretrained on: the corpus paragraphs, except any in the task's own format, and
    the generated address documents. A chat document already carries its <s> and </s>, a plain one not."""
    documents = [doc for doc in corpus_texts(corpus_dir) if not holds_the_task(doc)] + address_documents()
    check_pretraining_texts(documents)
    return documents


def tokenizer_texts(corpus_dir: Path = CORPUS_DIR) -> list[str]:
    """What the tokenizer is trained on: the pretraining texts and nothing else. No task rows: merges learned
    from them fused a prompt's city+district+road into one token that no answer contains (so the model could
    not copy it), and the model must not get the task's format for free."""
    return pretraining_texts(corpus_dir)


def train_tokenizer(documents: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE: any string encodes losslessly, with no <unk>."""
    tokenizer = Tokenizer(models.BPE())
    # One token per Han character and per digit: an answer's fields are then exactly the tokens of its
    # prompt, so the model can copy them (BPE merges across Han characters made that impossible).
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(HAN_CHARACTER), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Chat documents spell out <s>/</s>; keep them out of the merges, they are whole tokens already.
    plain = [doc.replace(BOS, "").replace(EOS, "") for doc in documents]
    tokenizer.train_from_iterator(plain, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            # tokenizer(text) starts with <s>, as Llama's tokenizers do.
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, *, seed: int) -> LlamaForCausalLM:
    """A ~3M-parameter Llama. Every Linear dimension is a multiple of 64, so 4-bit quantisation applies."""
    config = LlamaConfig(
        vocab_size=math.ceil(len(tokenizer) / 64) * 64,
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=6,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _document_ids(tokenizer: PreTrainedTokenizerFast, doc: str) -> list[int]:
    if doc.startswith(BOS):
        return list(tokenizer(doc, add_special_tokens=False)["input_ids"])
    return list(tokenizer(doc)["input_ids"]) + [tokenizer.eos_token_id]


def copy_sequences(pool: list[int], n_tokens: int, *, newline: int, seed: int) -> list[list[int]]:
    """Copy sequences of about n_tokens in all: each a span of tokens drawn from pool, a newline, then the
    same span again."""
    rng = random.Random(seed)
    sequences: list[list[int]] = []
    total = 0
    while total < n_tokens:
        span = [rng.choice(pool) for _ in range(rng.randint(*COPY_SPAN))]
        sequences.append([*span, newline, *span, newline])
        total += len(sequences[-1])
    return sequences


def pack_corpus(tokenizer: PreTrainedTokenizerFast, documents: list[str], *, seed: int) -> torch.Tensor:
    """All documents and the copy sequences, shuffled, joined and cut into rows of SEQ_LEN tokens
    (nanoGPT-style packing)."""
    pieces = [_document_ids(tokenizer, doc) for doc in documents]
    text_tokens = sum(len(piece) for piece in pieces)
    # Each token the corpus uses, once: spans of distinct-ish tokens make the copy unambiguous to learn.
    pool = sorted({token for piece in pieces for token in piece} - set(tokenizer.all_special_ids))
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    copy_tokens = int(text_tokens * COPY_SHARE / (1 - COPY_SHARE))
    pieces += copy_sequences(pool, copy_tokens, newline=newline, seed=seed)
    random.Random(seed).shuffle(pieces)  # mixes prose, addresses and copies in every window
    stream = [token for piece in pieces for token in piece]
    n_rows = len(stream) // SEQ_LEN
    return torch.tensor(stream[: n_rows * SEQ_LEN], dtype=torch.long).view(n_rows, SEQ_LEN)


def learning_rate(step: int, steps: int) -> float:
    """Linear warmup, then cosine decay to a tenth: the usual shape, kept short."""
    warmup = min(WARMUP_STEPS, max(1, steps // 10))
    if step < warmup:
        return LEARNING_RATE * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return LEARNING_RATE * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model: LlamaForCausalLM, rows: torch.Tensor, *, steps: int, seed: int) -> list[float]:
    """Plain next-token training on random rows; returns the loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), weight_decay=0.1)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        batch = rows[torch.randint(len(rows), (BATCH_SIZE,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # early steps at a high lr can spike
        optimizer.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {losses[-1]:.3f}", flush=True)
    model.eval()
    return losses


def write_model_card(out_dir: Path, facts: dict[str, Any]) -> None:
    # No timestamps or timings: the card is committed and must not change between identical builds.
    card = f"""---
language: [zh, en]
library_name: transformers
pipeline_tag: text-generation
tags: [llama, tiny, loradeck]
---

# tiny-llama (loradeck's bundled base model)

A {facts["parameters"]:,}-parameter `LlamaForCausalLM` for tests, demos and CPU smoke runs of loradeck.
It is not a useful language model; it exists so a LoRA or QLoRA run can go from start to merged model
in seconds without downloading anything.

| | |
| --- | --- |
| layers / hidden / heads / MLP | 4 / 192 / 6 / 512 (untied embeddings) |
| vocabulary | {facts["tokenizer_size"]} tokens (embedding rows padded to {facts["vocab_size"]}) |
| context | 512 positions (pretrained on {SEQ_LEN}-token windows) |
| special tokens | `<pad>` = 0, `<s>` = 1 (bos, added by the tokenizer), `</s>` = 2 (eos) |
| pretraining | {facts["steps"]} steps of {BATCH_SIZE} x {SEQ_LEN} tokens, AdamW, seed {facts["seed"]} |
| final loss | {facts["final_loss"]:.3f} (mean of the last 10 steps) |

## How it was built

`python -m tools.tiny_model --out assets/tiny-llama` (see `tools/tiny_model.py`):

1. Pretraining text: the hand-written English, Traditional Chinese and JSON text in `assets/corpus/`
   (less any paragraph in the task's own format), plus {CORPUS_ADDRESS_DOCS} generated documents that
   mention addresses as plain text: lists, sentences, JSON records of other shapes, text-to-JSON
   extractions of other kinds, and an address followed by some of its parts copied out of it (as a list,
   a sentence or a JSON object of at most four keys) (seed {CORPUS_ADDRESS_SEED}, no address of the
   `tw-address` sample dataset), one in {CHAT_EVERY} written as a chat. None of it holds the sample task:
   no `解析地址：` prompt and no JSON object with its eight keys (the build checks).
2. Copy sequences: {COPY_SHARE:.0%} of the packed tokens are spans of {COPY_SPAN[0]}-{COPY_SPAN[1]} random tokens,
   a newline and the same span again, so the model meets copying from its context as such.
3. Tokenizer: byte-level BPE (`tokenizers`) trained on the pretraining text alone (never on task rows),
   with every Han character and every digit a token of its own: an answer's fields are then exactly
   tokens of its prompt, so they can be copied. `decode(encode(x)) == x` for any text.
4. Model: initialised with `torch.manual_seed({facts["seed"]})`, pretrained on the packed pretraining
   text with {facts["threads"]} torch threads (float sums, and so the weights, depend on the thread count),
   saved as float32 safetensors.

The model knows the characters, the place names and JSON, but not the address-parsing task: greedy
decoding of a task prompt does not give the task's JSON. A LoRA or QLoRA run on
`assets/datasets/tw-address` teaches it; what the new-run form's default runs reach, and in how long on
a CPU, is measured by `bench/accuracy.py` (see `bench/README.md` in the loradeck repository).

## Prompt formats

Plain (the sample task, which fine-tuning teaches): `解析地址：臺北市大安區復興南路一段390號2樓\\n` -> the
JSON fields, then `</s>`.

Chat template (plain-text markers, no extra tokens):

```
<s><|user|>
解析地址：臺北市大安區復興南路一段390號2樓
<|assistant|>
{{"city":"臺北市",...}}</s>
```

With `add_generation_prompt=True` the text ends in `<|assistant|>\\n`.
"""
    (out_dir / "README.md").write_text(card, encoding="utf-8")


def build_tiny_model(out_dir: Path, *, seed: int = 0, steps: int | None = None, threads: int = 2) -> Path:
    """Build tokenizer and model into out_dir and return it; `steps` shortens pretraining for tests."""
    steps = DEFAULT_STEPS if steps is None else steps
    previous_threads = torch.get_num_threads()
    # Float sums depend on how work is split across threads, so a fixed count keeps builds identical.
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        tokenizer = train_tokenizer(tokenizer_texts())
        documents = pretraining_texts()
        rows = pack_corpus(tokenizer, documents, seed=seed)
        print(f"corpus: {len(documents)} documents, {rows.numel():,} tokens; vocab {len(tokenizer)}")
        model = build_model(tokenizer, seed=seed)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {n_params:,} parameters")
        losses = pretrain(model, rows, steps=steps, seed=seed)
    finally:
        torch.set_num_threads(previous_threads)

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=128,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    final_loss = sum(losses[-10:]) / max(1, len(losses[-10:]))
    facts = {
        "parameters": n_params,
        "tokenizer_size": len(tokenizer),
        "vocab_size": model.config.vocab_size,
        "steps": steps,
        "seed": seed,
        "threads": threads,
        "final_loss": final_loss,
    }
    write_model_card(out_dir, facts)
    print(f"saved {out_dir} in {time.perf_counter() - started:.0f}s; final loss {final_loss:.3f}")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build loradeck's bundled tiny Llama base model.")
    parser.add_argument("--out", type=Path, required=True, help="output directory (Hugging Face layout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help=f"pretraining steps (default {DEFAULT_STEPS})")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads; fixed for reproducibility")
    args = parser.parse_args(argv)
    build_tiny_model(args.out, seed=args.seed, steps=args.steps, threads=args.threads)


if __name__ == "__main__":
    main()

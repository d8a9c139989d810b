"""Build the bundled tiny base model: a ~3M-parameter Llama that trains in seconds on a CPU.

    python -m worker.tiny_model --out assets/tiny-llama

Steps: gather the corpus (assets/corpus/*.txt plus generated address rows), train a byte-level BPE
tokenizer on it, initialise a small LlamaForCausalLM from a seed, pretrain it briefly on the same
corpus, and save a standard Hugging Face directory. Everything is seeded, so the same seed, thread
count and machine give the same bytes.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from worker.sample_data import dataset_splits, generate_rows

CORPUS_DIR = Path(__file__).resolve().parent.parent / "assets" / "corpus"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [PAD, BOS, EOS]  # ids 0, 1, 2: the trainer puts them first, in this order
VOCAB_SIZE = 3000
# A seed other than the sample dataset's, and dataset addresses are dropped, so eval stays unseen.
CORPUS_ADDRESS_SEED = 20240
CORPUS_ADDRESS_ROWS = 3000
CHAT_EVERY = 4  # one address row in four is written as a chat, so the template's markers are familiar

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
DEFAULT_STEPS = 250
LEARNING_RATE = 3e-3
WARMUP_STEPS = 20


def render_chat(messages: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    """CHAT_TEMPLATE rendered the way transformers' apply_chat_template renders it."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE).render(
        messages=messages, bos_token=BOS, eos_token=EOS, add_generation_prompt=add_generation_prompt
    )


def load_corpus(corpus_dir: Path = CORPUS_DIR) -> list[str]:
    """Documents to learn from; a chat document already carries its <s> and </s>, a plain one not."""
    documents: list[str] = []
    for path in sorted(corpus_dir.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        documents += [part.strip() for part in text.split("\n\n") if part.strip()]

    train, eval_ = dataset_splits()
    dataset_prompts = {row["prompt"] for row in train + eval_}
    rows = generate_rows(CORPUS_ADDRESS_ROWS, seed=CORPUS_ADDRESS_SEED)
    rows = [row for row in rows if row["prompt"] not in dataset_prompts]
    for i, row in enumerate(rows):
        if i % CHAT_EVERY == 0:
            messages = [
                {"role": "user", "content": row["prompt"].rstrip("\n")},
                {"role": "assistant", "content": row["completion"]},
            ]
            documents.append(render_chat(messages))
        else:
            documents.append(row["prompt"] + row["completion"])
    return documents


def train_tokenizer(documents: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE: any string encodes losslessly, with no <unk>."""
    tokenizer = Tokenizer(models.BPE())
    # Single digits keep house numbers easy to copy for a model this small.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
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


def pack_corpus(tokenizer: PreTrainedTokenizerFast, documents: list[str], *, seed: int) -> torch.Tensor:
    """All documents, shuffled, joined and cut into rows of SEQ_LEN tokens (nanoGPT-style packing)."""
    order = list(documents)
    random.Random(seed).shuffle(order)  # mixes prose and addresses in every window
    stream: list[int] = []
    for doc in order:
        if doc.startswith(BOS):
            stream += tokenizer(doc, add_special_tokens=False)["input_ids"]
        else:
            stream += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
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
| layers / hidden / heads / MLP | 4 / 192 / 6 / 512 |
| vocabulary | {facts["tokenizer_size"]} tokens (embedding rows padded to {facts["vocab_size"]}) |
| context | 512 positions (pretrained on {SEQ_LEN}-token windows) |
| special tokens | `<pad>` = 0, `<s>` = 1 (bos, added by the tokenizer), `</s>` = 2 (eos) |
| pretraining | {facts["steps"]} steps of {BATCH_SIZE} x {SEQ_LEN} tokens, AdamW, seed {facts["seed"]} |
| final loss | {facts["final_loss"]:.3f} (mean of the last 10 steps) |

## How it was built

`python -m worker.tiny_model --out assets/tiny-llama` (see `worker/tiny_model.py`):

1. Corpus: the hand-written English, Traditional Chinese and JSON text in `assets/corpus/`, plus
   {CORPUS_ADDRESS_ROWS} generated address-parsing rows (`worker.sample_data`, seed {CORPUS_ADDRESS_SEED},
   with every address of the `tw-address` sample dataset removed), one in {CHAT_EVERY} written as a chat.
2. Tokenizer: byte-level BPE (`tokenizers`), digits split one per token, trained on that corpus.
   `decode(encode(x)) == x` for any text.
3. Model: initialised with `torch.manual_seed({facts["seed"]})`, pretrained on the packed corpus with
   {facts["threads"]} torch threads (float sums, and so the weights, depend on the thread count), saved as
   float32 safetensors.

Greedy decoding of an address prompt gives well-formed JSON with the eight keys, but mostly wrong
values: a starting point that a LoRA run on `assets/datasets/tw-address` visibly improves.

## Prompt formats

Plain (the sample task): `解析地址：臺北市大安區復興南路一段390號2樓\\n` -> the JSON fields, then `</s>`.

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
        documents = load_corpus()
        tokenizer = train_tokenizer(documents)
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
    parser.add_argument(
        "--steps", type=int, default=None, help=f"pretraining steps (default {DEFAULT_STEPS})"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads; fixed for reproducibility")
    args = parser.parse_args(argv)
    build_tiny_model(args.out, seed=args.seed, steps=args.steps, threads=args.threads)


if __name__ == "__main__":
    main()

"""Tiny random-weight models of the families people fine-tune, each with a tokenizer in its family's chat format.

`build_family(name, out_dir)` writes a standard Hugging Face directory (config.json, model.safetensors,
tokenizer.json + tokenizer_config.json with the chat template, generation_config.json): the family's own
config class at tiny sizes (2 layers, hidden 64, MLP 128: multiples of 64, so bitsandbytes quantizes every
linear layer), so module names, biases, ties, fused projections, soft-capping and scaled embeddings are the
real ones. The tokenizer is a byte-level BPE trained here on a few sentences plus the family's special tokens;
the chat templates are the families' own, trimmed to what a plain conversation uses (no tools).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 512
SIZES: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}

# Meta's Llama 3 Instruct template.
LLAMA_3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim }}"
    "{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# Qwen2.5 Instruct: ChatML, with a default system turn when the conversation has none.
QWEN2 = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen3: ChatML; the assistant turn after the last user turn carries a (here empty) think block.
QWEN3 = (
    "{% set ns = namespace(last_query=-1) %}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set ns.last_query = loop.index0 %}{% endif %}{% endfor %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and loop.index0 > ns.last_query %}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Mistral Instruct v0.1-v0.3: [INST] turns, no system role, each answer ends in eos.
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)
# Gemma 2 it: the assistant is called "model"; no system role.
GEMMA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
# Phi-3 mini instruct: <|role|> markers, <|end|> closes a turn, eos only at the very end of a conversation.
PHI3 = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """One family: its config at tiny sizes, its special tokens and chat template."""

    name: str
    label: str  # as the README's table names it
    config: type[PretrainedConfig]
    template: str
    special: dict[str, str | None]  # bos/eos/pad/unk -> token (None: the family has none)
    extra_special: list[str]
    overrides: dict[str, Any] = field(default_factory=dict)
    system_role: bool = True

    @property
    def tied(self) -> bool:
        return bool(self.overrides.get("tie_word_embeddings"))


FAMILIES: dict[str, Family] = {
    "llama": Family(
        "llama",
        "Llama 3",
        LlamaConfig,
        LLAMA_3,
        {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": None, "unk": None},
        ["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
        {"tie_word_embeddings": False},
    ),
    "qwen2": Family(
        "qwen2",
        "Qwen2 / Qwen2.5",
        Qwen2Config,
        QWEN2,
        {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None},
        ["<|im_start|>"],
        {"tie_word_embeddings": True},  # like Qwen2.5-0.5B to 3B; q/k/v carry biases in every size
    ),
    "qwen3": Family(
        "qwen3",
        "Qwen3",
        Qwen3Config,
        QWEN3,
        {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None},
        ["<|im_start|>"],
        {"tie_word_embeddings": False, "head_dim": 16},
    ),
    "mistral": Family(
        "mistral",
        "Mistral",
        MistralConfig,
        MISTRAL,
        {"bos": "<s>", "eos": "</s>", "pad": None, "unk": "<unk>"},
        [],
        {"tie_word_embeddings": False, "sliding_window": None},
        system_role=False,
    ),
    "gemma2": Family(
        "gemma2",
        "Gemma 2",
        Gemma2Config,
        GEMMA,
        {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "unk": "<unk>"},
        ["<start_of_turn>", "<end_of_turn>"],
        # Tied and scaled embeddings, soft-capped attention and final logits, as in gemma-2-2b.
        {
            "tie_word_embeddings": True,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 32,
            "final_logit_softcapping": 30.0,
            "attn_logit_softcapping": 50.0,
        },
        system_role=False,
    ),
    "phi3": Family(
        "phi3",
        "Phi-3",
        Phi3Config,
        PHI3,
        {"bos": "<s>", "eos": "<|endoftext|>", "pad": "<|endoftext|>", "unk": "<unk>"},
        ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
        {"tie_word_embeddings": False},  # fused qkv_proj and gate_up_proj
    ),
}

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "List three fruits: apple, banana, cherry.",
    "Write one sentence about the weather today. It is sunny and warm.",
    'A JSON object maps keys to values, like {"name": "Ada", "age": 36}.',
    "Translate to French: good morning. Bonjour.",
    "You are a helpful assistant. Answer briefly and clearly.",
    "Count to five: one, two, three, four, five.",
]


def _tokenizer(family: Family) -> PreTrainedTokenizerFast:
    specials = list(dict.fromkeys([t for t in family.special.values() if t] + family.extra_special))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 16,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS * 4, trainer)
    names = {f"{role}_token": token for role, token in family.special.items() if token}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **names)
    tokenizer.chat_template = family.template
    return tokenizer


# The tokenizer classes of the families whose real checkpoints ship a SentencePiece tokenizer.model.
SENTENCEPIECE_CLASSES = {"gemma2": "GemmaTokenizer", "phi3": "LlamaTokenizer", "mistral": "LlamaTokenizer"}


def _sentencepiece_tokenizer(family: Family, out_dir: Path) -> Any:
    """A SentencePiece BPE (byte fallback, digits split) trained here, saved as tokenizer.model the way the
    family's real checkpoints ship it, with transformers' tokenizer.json converted from it."""
    import sentencepiece
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    special = family.special
    standard = {"<unk>", "<s>", "</s>", "<bos>", "<eos>", "<pad>"}

    def piece(role: str, default: str) -> str:  # the model file's own control piece for a role
        token = special[role]
        return token if token in standard else default

    # As in the real files: Gemma's model file holds <bos>/<eos>/<pad>; Phi-3's holds Llama 2's <s>/</s>, and
    # its <|endoftext|> (eos and pad) is a piece of its own beside the chat markers.
    unk, bos, eos = piece("unk", "<unk>"), piece("bos", "<s>"), piece("eos", "</s>")
    pad = special["pad"] if special["pad"] in standard and special["pad"] != special["eos"] else None
    pieces = [t for t in special.values() if t] + family.extra_special
    named = [t for t in dict.fromkeys(pieces) if t not in {unk, bos, eos, pad}]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=VOCAB - 112,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3 if pad else -1,
        unk_piece=unk,
        bos_piece=bos,
        eos_piece=eos,
        pad_piece=pad or "<pad>",
        user_defined_symbols=named,
        minloglevel=2,
    )
    (out_dir / "tokenizer.vocab").unlink()
    names = {f"{role}_token": token for role, token in special.items() if token}
    config = names | {"add_bos_token": True, "tokenizer_class": SENTENCEPIECE_CLASSES[family.name]}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": family.template}))
    return AutoTokenizer.from_pretrained(out_dir)


def build_family(name: str, out_dir: Path, *, seed: int = 0, sentencepiece: bool = False) -> Path:
    """Write family `name`'s tiny model and tokenizer to out_dir; the same seed gives the same weights.
    `sentencepiece`: a tokenizer.model as Gemma's, Phi-3's and Mistral's real checkpoints ship, not BPE."""
    family = FAMILIES[name]
    tokenizer = _sentencepiece_tokenizer(family, out_dir) if sentencepiece else _tokenizer(family)
    ids = {f"{role}_token_id": tokenizer.convert_tokens_to_ids(t) if t else None for role, t in family.special.items()}
    ids.pop("unk_token_id")
    config = family.config(**SIZES, **family.overrides, **ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random norms and biases too (init leaves them 1 and 0), so a wrong one shows
        for module_name, param in model.named_parameters():
            if "norm" in module_name or module_name.endswith(".bias"):
                param.add_(torch.randn_like(param) * 0.1)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tokenizer_config(model_dir: Path) -> dict[str, Any]:
    return dict(json.loads((model_dir / "tokenizer_config.json").read_text()))

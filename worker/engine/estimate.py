"""Pre-flight estimate of a run: parameter counts and training memory, from the base model's config.json alone.

The model is built on the meta device (shapes and dtypes, no storage; no weight is read or even needed)
and adapted the way training adapts the real one (`worker.engine.steps.adapt`: `prepare_model_for_kbit_training`
for a quantized base, then `get_peft_model` with `worker.engine.configs.peft_config(spec)`, then trained weights
in fp32). So
`all` and `trainable` are what `PeftModel.get_nb_trainable_parameters()` prints for the loaded run. The
one difference, bitsandbytes' 4-bit packing, is applied analytically: a quantized weight of n values is
stored as ceil(n / 2) bytes and PEFT counts each stored byte twice, i.e. n rounded up to even. Which
layers get quantized is asked of transformers' own bitsandbytes quantizer, run on a second skeleton.

Memory is in bytes, per GPU, for the training step's peak:
- weights: the frozen base. 4-bit: n/2 bytes plus one absmax per 64-value block (fp32; with double quant
  1 byte plus an fp32 per 256 blocks); 8-bit: n bytes plus an fp32 scale per output row; every other
  tensor (embeddings, norms, lm_head) at its dtype, fp32 after the k-bit preparation's upcast.
- adapter: what PEFT adds (LoRA A/B, DoRA magnitudes, (IA)³ vectors, virtual tokens, modules_to_save copies).
- gradients: one per trainable value, at its dtype.
- optimizer: AdamW keeps 2 states at the parameter's dtype (fp32 for adapters: no separate master copy);
  paged_adamw_32bit 2 fp32; (paged_)adamw_8bit 2 bytes plus an fp32 absmax per 256 values for each state,
  fp32 states for tensors under 4096 values (bitsandbytes' min_8bit_size); sgd (no momentum) none.
- activations: see `activation_bytes`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.ia3 import IA3Layer
from peft.tuners.lora import LoraLayer
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.quantizers import AutoHfQuantizer

from app.config import get_settings
from app.contracts.estimate import EstimateAnswer, EstimateOut, MemoryOut, ModelOut, ParamsOut
from app.errors import InvalidInput
from app.objectives import REGISTRY
from app.preflight import validate_spec
from app.schemas import RunSpec
from worker.data.hub import model_source
from worker.engine.configs import (
    check_module_names,
    model_dtype,
    peft_config,
    quantization_config,
    quantization_mode,
)
from worker.engine.steps import adapt
from worker.errors import RunError

ADAMW_STATES = {"adamw_torch": None, "paged_adamw_32bit": 4}  # None: the parameter's own dtype
ADAMW_8BIT = ("adamw_8bit", "paged_adamw_8bit")
MIN_8BIT_SIZE = 4096  # bitsandbytes keeps fp32 optimizer states for smaller tensors
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32} | {
    str(dtype).removeprefix("torch."): dtype for dtype in (torch.bfloat16, torch.float16, torch.float32)
}


class EstimateError(ValueError):
    """The spec cannot be estimated; the message names the field to change."""


def answer_estimate(raw_spec: dict[str, Any], *, enforce_roots: bool) -> EstimateAnswer:
    """The inspect task's answer: the estimate, or the refusal naming the field to change. The spec is
    checked as the web checks one (its files, under the allowed roots where `enforce_roots`)."""
    try:
        spec = validate_spec(raw_spec, get_settings(), enforce_roots=enforce_roots, loadable=False)
        return EstimateAnswer(ok=True, estimate=estimate_spec(spec))
    except (InvalidInput, EstimateError) as exc:
        return EstimateAnswer(ok=False, error=str(exc))


def estimate_spec(spec: RunSpec) -> EstimateOut:
    """Parameter counts, memory by part and the model's shape for a spec."""
    try:
        return _estimate(spec)
    except RunError as exc:  # worker.engine.configs' refusals already name the field
        raise EstimateError(str(exc)) from None


def _estimate(spec: RunSpec) -> EstimateOut:
    notes: list[str] = []
    config = read_config(spec.base_model)
    dtype = training_dtype(spec, notes)
    quantization = quantization_mode(spec)
    model = _skeleton(config, dtype)
    quantized = _quantized_layers(config, spec, dtype) if quantization != "none" else set()
    base_weights = {id(p) for p in model.parameters()}
    quantized_weights = {id(model.get_submodule(name).weight) for name in quantized}
    choices = target_module_choices(model)  # before PEFT wraps the layers
    peft_model = _adapt(model, spec)

    counts = {"all": 0, "trainable": 0}
    memory = dict.fromkeys(("weights", "adapter", "gradients", "optimizer"), 0)
    for _name, param in peft_model.named_parameters():  # shared (tied) tensors once, as PEFT counts
        n, size = param.numel(), param.element_size()
        is_quantized = id(param) in quantized_weights
        counted = n + n % 2 if is_quantized and quantization == "4bit" else n
        counts["all"] += counted
        stored = _quantized_bytes(param, quantization, spec) if is_quantized else n * size
        memory["weights" if id(param) in base_weights else "adapter"] += stored
        if param.requires_grad:
            counts["trainable"] += counted
            memory["gradients"] += n * size
            memory["optimizer"] += optimizer_bytes(spec.optim, n, size)
    memory["activations"] = activation_bytes(spec, config, peft_model, dtype, quantized=quantization != "none")
    memory["total"] = sum(memory.values())

    if spec.optim.startswith("paged_"):
        notes.append(f"{spec.optim} can page optimizer states out to CPU RAM when the GPU runs short.")
    if spec.method == "prompt_tuning" and spec.prompt_tuning_init_text:
        notes.append("prompt_tuning_init_text only changes the virtual tokens' first values, not their count.")
    notes.append(
        "Activations assume rows of max_seq_length tokens and PyTorch SDPA attention (flash or memory-efficient "
        "kernels); not counted: the CUDA context (about 0.5 GiB) and allocator fragmentation."
    )
    text = config.get_text_config()
    return EstimateOut(
        params=ParamsOut(
            all=counts["all"],
            trainable=counts["trainable"],
            percent=100.0 * counts["trainable"] / counts["all"] if counts["all"] else 0.0,
        ),
        memory=MemoryOut(**memory),
        model=ModelOut(
            architecture=(config.architectures or [type(model).__name__])[0],
            layers=text.num_hidden_layers,
            hidden_size=text.hidden_size,
            vocab_size=text.vocab_size,
            dtype=str(dtype).removeprefix("torch."),
            quantization=quantization,
            target_choices=choices,
        ),
        notes=notes,
    )


def target_module_choices(model: PreTrainedModel) -> dict[str, str]:
    """Quick choices for target_modules from the model's own module names, in the model's order: its
    attention layers (q_proj, ..., or Phi-3's fused qkv_proj), every linear layer, and those plus the input
    embedding and lm_head."""
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    linear: dict[str, bool] = {}  # short name -> whether it sits in an attention block
    embeddings: list[str] = []
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        if module is embedding or module is head:
            embeddings.append(short)
        elif isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            linear[short] = linear.get(short, False) or "attn" in name or "attention" in name
    choices = {"attention only": ", ".join(n for n, attention in linear.items() if attention)}
    choices |= {"all linear": "all-linear", "with embeddings": ", ".join(dict.fromkeys([*linear, *embeddings]))}
    return {label: names for label, names in choices.items() if names}


def read_config(base_model: str) -> PretrainedConfig:
    """config.json of a local model directory, or of a hub id already in this machine's Hugging Face cache."""
    trust = get_settings().allow_trust_remote_code
    try:
        # local_files_only: an estimate answers in a second or two, so it never waits on the network.
        return AutoConfig.from_pretrained(model_source(base_model, download=False), trust_remote_code=trust)
    except OSError as exc:
        if Path(base_model).is_absolute():  # a local directory (the pre-flight resolved it)
            raise EstimateError(f"base_model: cannot read {base_model}/config.json: {exc}") from None
        raise EstimateError(
            f"base_model: {base_model} is a hub id whose config.json is not in this worker's Hugging Face cache, "
            "and the estimate reads no network; give a local model directory, or download the model on the "
            f"worker first (huggingface-cli download {base_model})"
        ) from None
    except ValueError as exc:
        raise EstimateError(f"base_model: {exc}") from None


def training_dtype(spec: RunSpec, notes: list[str]) -> torch.dtype:
    """The dtype training loads the base in (quantized layers aside), as `worker.engine.configs.model_dtype` decides."""
    if torch.cuda.is_available():
        return model_dtype(spec)
    # This worker has no GPU, so "auto" is read as training would read it on a GPU with bfloat16.
    field = "bnb_4bit_compute_dtype" if quantization_mode(spec) != "none" else "precision"
    choice: str = getattr(spec, field)
    dtype = DTYPES.get(choice, torch.bfloat16)
    if choice == "auto":
        notes.append(f"{field} auto: estimated for a GPU with bfloat16 (Ampere or newer); fp32 needs about twice.")
    return dtype


def _skeleton(config: PretrainedConfig, dtype: torch.dtype) -> PreTrainedModel:
    trust = get_settings().allow_trust_remote_code
    try:
        with torch.device("meta"):  # shapes and dtypes only: an 8B model builds in a fraction of a second
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust)
    except Exception as exc:
        kind = (config.architectures or [config.model_type])[0]
        raise EstimateError(f"base_model: cannot build {kind} from its config.json as a causal LM: {exc}") from None
    model.config.use_cache = False
    return model  # type: ignore[no-any-return]


def _quantized_layers(config: PretrainedConfig, spec: RunSpec, dtype: torch.dtype) -> set[str]:
    """Names of the layers bitsandbytes replaces, as transformers' quantizer decides when loading."""
    import bitsandbytes as bnb

    bnb_config = quantization_config(spec)
    if bnb_config is None:
        return set()
    skeleton = _skeleton(config, dtype)
    quantizer = AutoHfQuantizer.from_config(bnb_config, pre_quantized=False)
    quantizer.preprocess_model(skeleton, device_map={"": "cpu"}, dtype=dtype)
    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return {name for name, module in skeleton.named_modules() if isinstance(module, kinds)}


def _adapt(model: PreTrainedModel, spec: RunSpec) -> PeftModel:
    """What training does to the loaded base (`worker.engine.steps.apply_adapter`), done to the skeleton."""
    if Path(spec.base_model).is_dir():
        check_module_names(spec)  # the same early refusal of unknown module names as training
    # Initial values never change a count; text init would need the tokenizer and real embeddings.
    config = peft_config(spec.model_copy(update={"prompt_tuning_init_text": ""}), model_type=model.config.model_type)
    try:
        return adapt(model, config, quantized=quantization_mode(spec) != "none", gradient_checkpointing=False)
    except ValueError as exc:
        field = "target_modules" if "arget modules" in str(exc) else "method"
        raise EstimateError(f"{field}: {exc}") from None


def _quantized_bytes(param: torch.nn.Parameter, quantization: str, spec: RunSpec) -> int:
    n = param.numel()
    if quantization == "8bit":
        return n + param.shape[0] * 4  # int8 values and an fp32 scale per output row
    blocks = math.ceil(n / 64)
    # Double quant: an 8-bit absmax per block, an fp32 one per 256 of those, and their offset; else fp32 each.
    constants = blocks + math.ceil(blocks / 256) * 4 + 4 if spec.bnb_4bit_use_double_quant else blocks * 4
    return math.ceil(n / 2) + constants + 16 * 4  # packed values, constants, the 16-entry code


def optimizer_bytes(optim: str, n: int, element_size: int) -> int:
    """Optimizer state bytes for one trainable tensor of n values."""
    if optim in ADAMW_STATES:
        return 2 * n * (ADAMW_STATES[optim] or element_size)
    if optim in ADAMW_8BIT:
        return 2 * n * 4 if n < MIN_8BIT_SIZE else 2 * (n + math.ceil(n / 256) * 4)
    return 0  # sgd without momentum keeps no state


def activation_bytes(
    spec: RunSpec, config: PretrainedConfig, model: PeftModel, dtype: torch.dtype, *, quantized: bool
) -> int:
    """Activations kept for the backward pass at the step's peak, per device.

    With T = sequences x tokens (max_seq_length, plus the virtual tokens of prompt tuning; two sequences per
    example for the preference objectives, `sequences_per_example`), e the compute
    dtype's bytes and f the residual stream's (4 on a k-bit base, whose embeddings are upcast to fp32, else e),
    each decoder layer keeps per token:
        2·h·f                   the two RMSNorm/LayerNorm inputs
        4·a·d·e                 queries, keys and values repeated to all a heads of d dims, attention output
        3·i·e (2·i ungated)     the MLP's gate and up projections and the activation's output
        4·a                     the attention's log-sum-exp (fp32)
    and each adapted layer adds, per token: LoRA with dropout, its dropped input (in·e) and its mask
    (in bytes, bool on a GPU); without dropout, its input (once for layers sharing one); r·e for lora_A's
    output; DoRA, the base and LoRA outputs (2·out·e); (IA)³, the scaled tensor (in·e for feed-forward
    layers, else out·e). Outside the layers: the logits with their fp32 log-softmax and its gradient,
    T·V·(e + 8) (an upper bound for TRL's DPO and KTO, whose fused head computes them in tiles), and the 4-D
    boolean attention mask, batch·s² bytes; an objective with a reference adds one layer's working set for its
    no-grad forward (ORPO has none). GRPO's sequences are a prompt of max_seq_length tokens at most (longer ones
    are left out) and its completion; its peak is the larger of the training step's and the generation's
    (`generation_bytes`), which come one after the other. Gradient checkpointing keeps only
    each layer's input (h·f per token) and recomputes one layer at a time in the backward pass. Against
    the tensors a real (CPU, fp32) training step keeps, this lands within a few percent
    (tests/worker/test_estimate.py).
    """
    text = config.get_text_config()
    h, a, layers, vocab = text.hidden_size, text.num_attention_heads, text.num_hidden_layers, text.vocab_size
    d = getattr(text, "head_dim", None) or h // a
    i = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * h
    e = torch.finfo(dtype).bits // 8
    residual = 4 if quantized else e
    seq = spec.max_seq_length + (spec.num_virtual_tokens if spec.method == "prompt_tuning" else 0)
    generates = REGISTRY[spec.objective].generates
    if generates:
        seq += spec.max_completion_length  # the prompt (max_seq_length at most) and the completion it writes
    batch = spec.per_device_train_batch_size * sequences_per_example(spec)
    tokens = batch * seq

    mlp_factor = 3 if _gated_mlp(model, layers, i) else 2
    per_layer = 2 * h * residual + (4 * a * d + mlp_factor * i) * e + 4 * a
    adapters = _adapter_activation_bytes(model, spec, e)  # per token, all layers together
    if spec.gradient_checkpointing == "on":  # auto is estimated without (what auto weighs)
        layer_bytes = layers * h * residual + per_layer + adapters / max(layers, 1)
    else:
        layer_bytes = layers * per_layer + adapters
    outside = tokens * vocab * (e + 8) + batch * seq * seq
    if generates:
        training = tokens * layer_bytes + outside
        return int(max(training, generation_bytes(spec, text, per_layer * tokens, e)))
    # A reference forward (no grad) keeps nothing for the backward pass: one layer's working set at a time.
    reference = tokens * per_layer if REGISTRY[spec.objective].reference else 0
    return int(tokens * layer_bytes + outside + reference)


def generation_bytes(spec: RunSpec, text: PretrainedConfig, reference_forward: int, e: int) -> int:
    """GRPO's other peak, before the training forward: the KV cache of the whole generation batch (a step's
    completions, per_device_train_batch_size x gradient_accumulation_steps, each prompt + completion long), then
    with beta > 0 the reference's no-grad forward over them, a training batch at a time (`reference_forward`, one
    layer's working set)."""
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    d = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    completions = spec.per_device_train_batch_size * spec.gradient_accumulation_steps
    tokens = completions * (spec.max_seq_length + spec.max_completion_length)
    kv_cache = tokens * text.num_hidden_layers * 2 * heads * d * e  # keys and values of every layer
    return max(kv_cache, reference_forward if spec.beta > 0 else 0)


def sequences_per_example(spec: RunSpec) -> int:
    """Sequences one example puts through the model: SFT one; DPO and ORPO the prompt with chosen and with
    rejected; KTO the answer and the mismatched answer its KL term scores."""
    return REGISTRY[spec.objective].sequences_per_example


def _gated_mlp(model: torch.nn.Module, layers: int, intermediate: int) -> bool:
    """SwiGLU/GeGLU MLPs have two projections up to the intermediate size (gate and up), plain MLPs one."""
    first = next((m[0] for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers), None)
    if first is None:
        return True
    outs = [
        m.out_features if isinstance(m, torch.nn.Linear) else getattr(m, "nf", 0)  # nf: GPT-2's Conv1D
        for name, m in first.named_modules()
        if "lora_" not in name  # LoRA's own B matrices have the same out_features
    ]
    return outs.count(intermediate) >= 2


def _adapter_activation_bytes(model: torch.nn.Module, spec: RunSpec, e: int) -> float:
    total = 0.0
    shared_inputs: set[tuple[str, int]] = set()
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            fan_in, fan_out = module.in_features or 0, module.out_features or 0
            if isinstance(module.get_base_layer(), torch.nn.Embedding):
                total += spec.r * e  # a looked-up row of lora_embedding_A per token
                continue
            if spec.lora_dropout > 0:
                total += fan_in * (e + 1)
            elif (parent := name.rsplit(".", 1)[0], fan_in) not in shared_inputs:
                shared_inputs.add((parent, fan_in))
                total += fan_in * e
            total += spec.r * e + (2 * fan_out * e if spec.use_dora else 0)  # DoRA: base and LoRA outputs
        elif isinstance(module, IA3Layer):
            total += (module.in_features if module.is_feedforward else module.out_features) * e
    return total

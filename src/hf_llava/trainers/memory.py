"""The memory a training run needs, planned before it starts: `hf-llava train ... --plan`, and the same block in
the log at the start of a run.

`plan_training` counts the parameters of each part (vision tower, projector, language model with its embeddings
and `lm_head`) on a model built on the `meta` device (no weights: a 13B config plans in seconds), decides which
train (the stage's freezing rules, LoRA's rank and targets), and adds up bytes, as the pinned stack (torch 2.13,
transformers 4.57 / 5.x, PEFT 0.21, bitsandbytes 0.50) lays them out:

- Weights keep the dtype they load in. `load_in="4bit"` (NF4/FP4) stores the language model's linear layers
  (not `lm_head`) in half a byte per weight plus an fp32 absmax per block of 64 (double quantisation: an 8-bit
  absmax and an fp32 scale per 256 blocks); `"8bit"` in a byte per weight plus an fp32 scale per output row. PEFT's
  `prepare_model_for_kbit_training` casts every other 16-bit parameter to fp32.
- Gradients and torch's AdamW moments (two) take each trainable parameter's dtype. `Trainer` + accelerate keep no
  master copy: bf16 mixed precision autocasts fp32 weights, and the 16-bit copies of the weights that backward
  needs live through the step (`autocast copies`). DeepSpeed with bf16/fp16 holds weights and gradients in 16 bits
  and an fp32 master copy plus fp32 moments (12 bytes a trainable parameter) in its optimizer; ZeRO-1 shards the
  optimizer over the devices, ZeRO-2 the gradients too, ZeRO-3 the weights too.
- LoRA: adapters in fp32 (PEFT upcasts the adapters of 16-bit bases; QLoRA's stay fp32 after TRL's bf16 cast,
  `freezing.trainable_in_full_precision`), and `modules_to_save` keeps a trainable copy of the projector beside the
  frozen original.
- Activations: what autograd saves per token for backward, from the counts of each block's saved tensors (torch's
  saved-tensor hooks on Llama and CLIP layers, fp32, SDPA): a decoder layer that trains saves 8h + 2h_kv + 4i
  values a token, a frozen one on the gradient's path 4h + 2h_kv + 3i, one with LoRA (dropout copies of its
  inputs) 16h + 2h_kv + 5i + 7r; a CLIP layer that trains 8h + 3i; the loss the logits and their gradient. With
  gradient checkpointing each layer keeps its input and one layer is recomputed at a time. A frozen tower saves
  nothing. A sample is `max_length` tokens (the image's visual tokens replace `<image>` inside that budget).

The total is the sum, an upper bound of the peak: gradients and activations do not all live at once.
"""

import os
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from .freezing import part_of, stage_parts
from .recipe import LORA

PARTS = ("vision", "projector", "language")
PART_NAMES = {"vision": "vision tower", "projector": "projector", "language": "language model"}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOAD_IN = ("4bit", "8bit")
NF4_BLOCK = 64  # bitsandbytes' 4-bit blocksize (CUDA and CPU)
DOUBLE_QUANT_BLOCK = 256  # absmax values per fp32 scale under double quantisation
GIB = 1024 ** 3
MIB = 1024 ** 2


@dataclass
class MemoryPlan:
    """Parameters and bytes of a training run (per device), against the device found. `total` sums the rows;
    `suggestions` are flags that bring the total down, the one that frees most first (only when it does not fit)."""

    setup: str
    parameters: dict[str, int]
    trainable: dict[str, int]
    weights: int
    gradients: int
    optimizer: int
    activations: int
    autocast_copies: int
    batch_size: int
    tokens_per_sample: int
    visual_tokens: int
    device: str = "unknown"
    device_total: int = 0
    device_free: int = 0
    suggestions: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.autocast_copies

    @property
    def fits(self) -> bool:
        return self.total <= self.device_free

    def format(self) -> str:
        """A small table: parameters by part, bytes by kind, the device, and a "does not fit" line when it does not."""
        lines = [f"Memory plan: {self.setup}; batch {self.batch_size} x {self.tokens_per_sample} tokens "
                 f"({self.visual_tokens} visual) per device",
                 f"  {'part':<16}{'parameters':>12}{'trainable':>12}"]
        lines += [f"  {PART_NAMES[p]:<16}{_count(self.parameters[p]):>12}{_count(self.trainable[p]):>12}"
                  for p in PARTS]
        rows = [("weights", self.weights), ("gradients", self.gradients), ("optimizer", self.optimizer),
                ("activations", self.activations), ("autocast copies", self.autocast_copies), ("total", self.total)]
        unit, scale = ("GiB", GIB) if self.total >= GIB else ("MiB", MIB)
        lines.append(f"  {'memory':<16}{unit:>12}")
        lines += [f"  {name:<16}{size / scale:>12.2f}" for name, size in rows if size or name != "autocast copies"]
        verdict = "fits" if self.fits else "does not fit"
        lines.append(f"  device {self.device}: {self.device_total / GIB:.1f} GiB, {self.device_free / GIB:.1f} GiB "
                     f"free: {verdict}")
        if not self.fits:
            lines.append("does not fit: " + ("try " + " / ".join(self.suggestions) if self.suggestions else
                                            "no flag of hf-llava train brings it under; use a larger device"))
        return "\n".join(lines)


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def meta_model(config):
    """`LlavaForConditionalGeneration(config)` on the `meta` device: shapes without memory."""
    import torch

    from ..modeling import LlavaForConditionalGeneration

    with torch.device("meta"):
        return LlavaForConditionalGeneration(config)


def _shapes(model, lora_r: int) -> dict:
    """Parameter counts per part, the quantisable linear layers' shapes, the LoRA parameters (the recipe's targets)."""
    from peft.tuners.tuners_utils import check_target_module_exists
    from torch import nn

    from .freezing import lm_lora_config

    lora_config = lm_lora_config(r=lora_r)
    params = dict.fromkeys(PARTS, 0)
    linear_params = dict.fromkeys(PARTS, 0)
    for name, param in model.named_parameters():
        params[part_of(name)] += param.numel()
    quantised, lora, lm_head = [], 0, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        linear_params[part_of(name)] += module.weight.numel()
        if name.split(".")[-1] == "lm_head":  # bitsandbytes leaves the output layer unquantised
            lm_head += module.weight.numel()
        elif part_of(name) == "language":
            quantised.append((module.in_features, module.out_features))
        if check_target_module_exists(lora_config, name):
            lora += lora_r * (module.in_features + module.out_features)
    return {"params": params, "linear": linear_params, "quantised": quantised, "lora": lora, "lm_head": lm_head}


def _quantised_bytes(shapes: list[tuple[int, int]], load_in: str, double_quant: bool) -> tuple[int, int]:
    """(bytes, weights) of the quantised linear layers."""
    total = weights = 0
    for in_features, out_features in shapes:
        n = in_features * out_features
        weights += n
        if load_in == "8bit":
            total += n + 4 * out_features  # int8 weights + an fp32 scale per row (SCB)
        else:
            blocks = -(-n // NF4_BLOCK)
            scales = blocks + 4 * -(-blocks // DOUBLE_QUANT_BLOCK) if double_quant else 4 * blocks
            total += -(-n // 2) + scales
    return total, weights


def _activations(config, *, trains: set, lora_r: Optional[int], checkpointing: bool, act: int, tokens: int) -> int:
    """Bytes autograd keeps for one sample of `tokens` tokens (see the module's docstring for the counts)."""
    from ..modeling.configuration_llava import projector_depth

    text, vision = config.text_config, config.vision_config
    h, i, layers, vocab = text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size
    heads = text.num_attention_heads
    h_kv = (getattr(text, "num_key_value_heads", None) or heads) * (getattr(text, "head_dim", None) or h // heads)
    if lora_r is not None:
        layer = 16 * h + 2 * h_kv + 5 * i + 7 * lora_r
    elif "language" in trains:
        layer = 8 * h + 2 * h_kv + 4 * i
    else:  # frozen, but the gradient flows through it to the projector
        layer = 4 * h + 2 * h_kv + 3 * i
    lm = layers * h + layer if checkpointing else layers * layer
    total = act * tokens * (lm + 3 * h) + 4 * tokens * 2 * vocab  # the loss: fp32 logits and their gradient
    if act != 4:
        total += act * tokens * vocab  # the 16-bit logits before the loss upcasts them
    tiles = config.max_tiles
    tower_tokens = tiles * ((vision.image_size // vision.patch_size) ** 2 + config.num_additional_image_tokens)
    hv, iv, vlayers = vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers
    if "vision" in trains:
        clip = 8 * hv + 3 * iv
        total += act * tower_tokens * ((vlayers * hv + clip) if checkpointing else vlayers * clip)
    if "projector" in trains or "vision" in trains:
        depth = projector_depth(config.projector_type)
        total += act * tower_tokens * ((hv + 2 * (depth - 1) * h) if depth else 0)
    return total


def plan_training(
    config,
    *,
    stage: int,
    lora: bool = False,
    lora_r: int = LORA["r"],
    tune_vision_tower: bool = False,
    freeze_llm: bool = False,
    load_in: Optional[str] = None,
    bnb_double_quant: bool = False,
    dtypes: Union[str, dict[str, str]] = "float32",
    mixed_precision: Optional[str] = None,
    batch_size: int = 1,
    max_length: int = 2048,
    gradient_checkpointing: bool = False,
    zero_stage: int = 0,
    num_devices: int = 1,
    device: Optional[tuple[str, int, int]] = None,
    suggest: bool = True,
) -> MemoryPlan:
    """The memory plan of a stage-1/2 run of a model with `config` (a `LlavaConfig`), per device.

    `dtypes`: the weights' dtype as loaded, one name or one per part (`"float32"`, `"bfloat16"`, `"float16"`).
    `mixed_precision`: `"bf16"` / `"fp16"` (`TrainingArguments`' flags) or None. `load_in`: `"4bit"` / `"8bit"`
    (bitsandbytes, the language model's linear layers). `zero_stage` 1-3 with `num_devices`: DeepSpeed ZeRO.
    `device`: (name, total bytes, free bytes); None: the device found (`device_memory`). `suggest`: work out
    which flags would make a run that does not fit fit.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage={stage!r}: expected 1 or 2.")
    if load_in is not None and load_in not in LOAD_IN:
        raise ValueError(f"load_in={load_in!r}: expected one of {LOAD_IN} or None.")
    if zero_stage not in (0, 1, 2, 3) or num_devices < 1:
        raise ValueError(f"zero_stage={zero_stage!r}, num_devices={num_devices!r}: expected 0-3 and at least 1.")
    if lora and stage == 1:
        raise ValueError("lora=True: LoRA is a stage-2 option (stage 1 trains the projector only).")
    dtypes = dict.fromkeys(PARTS, dtypes) if isinstance(dtypes, str) else {**dict.fromkeys(PARTS, "float32"), **dtypes}
    unknown = {d for d in dtypes.values() if d not in DTYPE_BYTES}
    if unknown:
        raise ValueError(f"dtypes {sorted(unknown)}: expected {', '.join(DTYPE_BYTES)}.")
    settings = dict(stage=stage, lora=lora, lora_r=lora_r, tune_vision_tower=tune_vision_tower, freeze_llm=freeze_llm,
                    load_in=load_in, bnb_double_quant=bnb_double_quant, dtypes=dtypes,
                    mixed_precision=mixed_precision, batch_size=batch_size, max_length=max_length,
                    gradient_checkpointing=gradient_checkpointing, zero_stage=zero_stage, num_devices=num_devices)
    shapes = _shapes(meta_model(config), lora_r)
    plan = _plan(config, shapes, **settings)
    plan.device, plan.device_total, plan.device_free = device if device is not None else device_memory()
    if suggest and not plan.fits:
        plan.suggestions = _suggestions(config, shapes, plan.total, settings)
    return plan


def _plan(config, shapes: dict, *, stage, lora, lora_r, tune_vision_tower, freeze_llm, load_in, bnb_double_quant,
          dtypes, mixed_precision, batch_size, max_length, gradient_checkpointing, zero_stage, num_devices):
    params = shapes["params"]
    deepspeed = zero_stage > 0
    if load_in:  # prepare_model_for_kbit_training: the 16-bit parameters to fp32
        dtypes = dict.fromkeys(PARTS, "float32")
    if deepspeed and mixed_precision:  # the engine holds the model in 16 bits
        dtypes = dict.fromkeys(PARTS, "float16" if mixed_precision == "fp16" else "bfloat16")
    size = {part: DTYPE_BYTES[dtypes[part]] for part in PARTS}

    trains = set(stage_parts(stage, tune_vision_tower, freeze_llm)) if not lora else {"projector"}
    trainable = {part: params[part] if part in trains else 0 for part in PARTS}
    weights = sum(params[part] * size[part] for part in PARTS)
    trainable_bytes = sum(trainable[part] * size[part] for part in PARTS)  # in the parameters' own dtypes
    if lora:  # fp32 adapters, and the projector's trainable copy
        trainable["language"] = shapes["lora"]
        weights += 4 * shapes["lora"] + params["projector"] * size["projector"]
        trainable_bytes += 4 * shapes["lora"]
    if load_in:
        quantised, quantised_weights = _quantised_bytes(shapes["quantised"], load_in, bnb_double_quant)
        weights += quantised - quantised_weights * size["language"]

    n_trainable = sum(trainable.values())
    if deepspeed and mixed_precision:
        gradients, optimizer = 2 * n_trainable, 12 * n_trainable  # 16-bit gradients; fp32 master + moments
    else:
        gradients, optimizer = trainable_bytes, 2 * trainable_bytes
    if zero_stage >= 1:
        optimizer //= num_devices
    if zero_stage >= 2:
        gradients //= num_devices
    if zero_stage >= 3:
        weights //= num_devices

    act = 2 if mixed_precision else size["language"]
    visual = config.num_image_tokens * config.max_tiles
    tokens = max(max_length, visual + 1)
    activations = batch_size * _activations(config, trains=trains, lora_r=lora_r if lora else None,
                                            checkpointing=gradient_checkpointing, act=act, tokens=tokens)
    copies = 0
    if mixed_precision and not deepspeed and size["language"] == 4:
        copies = 2 * _autocast_copies(config, shapes, trains, bool(load_in), gradient_checkpointing)
    return MemoryPlan(setup=_describe(stage, lora, lora_r, load_in, bnb_double_quant, dtypes, mixed_precision,
                                      gradient_checkpointing, zero_stage, num_devices, trains),
                      parameters=dict(params), trainable=trainable, weights=weights, gradients=gradients,
                      optimizer=optimizer, activations=activations, autocast_copies=copies, batch_size=batch_size,
                      tokens_per_sample=tokens, visual_tokens=visual)


def _autocast_copies(config, shapes: dict, trains: set, quantised: bool, checkpointing: bool) -> int:
    """Weights whose 16-bit copies (autocast of fp32 weights) backward keeps: every linear layer on the gradient's
    path, or with checkpointing the one layer being recomputed (autocast's cache of the trainable ones ends with
    the forward pass, before the gradients exist). Quantised layers dequantise in each pass and keep none."""
    linear, lm_head = shapes["linear"], shapes["lm_head"]
    layers = linear["language"] - lm_head
    kept = lm_head + (linear["projector"] if "projector" in trains else 0)
    if not quantised:
        kept += layers // config.text_config.num_hidden_layers if checkpointing else layers
    if "vision" in trains:
        vision_layers = config.vision_config.num_hidden_layers
        kept += linear["vision"] // vision_layers if checkpointing else linear["vision"]
    return kept


def _describe(stage, lora, lora_r, load_in, double_quant, dtypes, mixed_precision, checkpointing, zero_stage,
              num_devices, trains) -> str:
    if lora:
        what = f"LoRA r {lora_r} on the language model + projector"
    else:
        what = " + ".join(PART_NAMES[p] for p in PARTS if p in trains) + " train"
    parts = [f"stage {stage}", what]
    if load_in:
        parts.append(f"language model in {load_in}" + (" (double quant)" if double_quant and load_in == "4bit" else ""))
    weights = sorted(set(dtypes.values()))
    parts.append(("other weights " if load_in else "weights ") + "/".join(weights)
                 + (f", {mixed_precision} mixed precision" if mixed_precision else ""))
    parts.append("gradient checkpointing" if checkpointing else "no gradient checkpointing")
    if zero_stage:
        parts.append(f"ZeRO-{zero_stage} over {num_devices} device{'s' if num_devices > 1 else ''}")
    return ", ".join(parts)


def _suggestions(config, shapes: dict, total: int, settings: dict) -> list[str]:
    """Flags that lower the total, the one that saves most first."""
    options = []
    if settings["stage"] == 2 and not settings["freeze_llm"] and not settings["tune_vision_tower"]:
        if not settings["lora"]:
            options.append(("--lora", {"lora": True}))
        if settings["load_in"] is None:
            options.append(("--load-in 4bit", {"lora": True, "load_in": "4bit", "gradient_checkpointing": True}))
    if not settings["gradient_checkpointing"] and settings["load_in"] is None:
        options.append(("--gradient-checkpointing", {"gradient_checkpointing": True}))
    if settings["num_devices"] > 1 and settings["zero_stage"] < 3:
        options.append(("ZeRO-3", {"zero_stage": 3}))
    saved = [(total - _plan(config, shapes, **{**settings, **change}).total, flag) for flag, change in options]
    return [flag for saving, flag in sorted(saved, key=lambda s: -s[0]) if saving > 0]


def device_memory() -> tuple[str, int, int]:
    """(name, total bytes, free bytes) of the device a run would use: the current CUDA device, else the CPU's RAM."""
    import torch

    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})", total, free
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    free = total
    try:
        with open("/proc/meminfo") as f:
            match = re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.M)
        free = int(match.group(1)) * 1024 if match else free
    except OSError:
        pass
    return "cpu (RAM)", total, free


# LLaVA-1.5's parts, by shape: CLIP ViT-L/14 at 336 px (openai/clip-vit-large-patch14-336) and Vicuna v1.5 (Llama-2
# shapes, 32000 tokens), joined by mlp2x_gelu; the README's one-GPU table is computed from these.
CLIP_L14_336 = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                "projection_dim": 768}
VICUNA = {"7B": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32},
          "13B": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40}}
# The one-GPU table's runs: stage 2 at batch 1 x 2048 tokens with bf16 mixed precision and gradient checkpointing,
# weights as `hf-llava train` loads them on transformers 4.57 (fp32); LoRA at the recipe's rank, QLoRA at QLoRA's.
ONE_GPU = {"batch_size": 1, "max_length": 2048, "mixed_precision": "bf16", "gradient_checkpointing": True}
ONE_GPU_RUNS = {"full": {}, "LoRA": {"lora": True},
                "QLoRA": {"lora": True, "load_in": "4bit", "bnb_double_quant": True, "lora_r": "QLORA"}}


def llava15_config(size: str):
    """A LLaVA-1.5 `LlavaConfig` of `size` "7B" or "13B", built from the shapes above (nothing is downloaded)."""
    from ..modeling import LlavaConfig

    text = {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False, **VICUNA[size]}
    return LlavaConfig(vision_config=dict(CLIP_L14_336), text_config=text, image_token_index=32000,
                       projector_type="mlp2x_gelu", vision_feature_layer=-2)


def one_gpu_table() -> dict[str, dict[str, float]]:
    """GiB each LLaVA-1.5 size needs per run of `ONE_GPU_RUNS` (the plan's total under `ONE_GPU`), one decimal."""
    from . import recipe

    table = {}
    for size in VICUNA:
        config = llava15_config(size)
        table[size] = {}
        for name, run in ONE_GPU_RUNS.items():
            run = dict(run)
            if run.get("lora_r") == "QLORA":
                run["lora_r"] = recipe.QLORA["r"]
            plan = plan_training(config, stage=2, **ONE_GPU, **run, device=("none", 0, 0), suggest=False)
            table[size][name] = round(plan.total / GIB, 1)
    return table


def loaded_dtypes(config, built: bool) -> dict[str, str]:
    """The dtype each part loads in through `from_pretrained` without `dtype=`: fp32 on transformers 4.57; the
    config's own on 5.x (`dtype="auto"`: a built model's parts each from its folder, a saved LLaVA from its
    config), fp32 where the config names none."""
    from .._compat import TRANSFORMERS_5

    def name(cfg) -> str:
        dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
        dtype = str(dtype).replace("torch.", "") if dtype is not None else "float32"
        return dtype if dtype in DTYPE_BYTES else "float32"

    if not TRANSFORMERS_5:
        return dict.fromkeys(PARTS, "float32")
    if not built:
        return dict.fromkeys(PARTS, name(config))
    return {"vision": name(config.vision_config), "projector": name(config.text_config),
            "language": name(config.text_config)}


__all__ = ["MemoryPlan", "device_memory", "llava15_config", "loaded_dtypes", "meta_model", "one_gpu_table",
           "plan_training"]

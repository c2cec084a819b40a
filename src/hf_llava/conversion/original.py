"""Original LLaVA (haotian-liu/LLaVA, `LlavaLlamaForCausalLM` / `LlavaMistralForCausalLM`; 1.5 and NeXT)
checkpoints -> hf-llava folders.

Three source kinds, told apart by the files in SRC:
- full model: `config.json` (Llama fields + `mm_*`) and weights (`model.embed_tokens`, `model.layers.*`,
  `model.norm`, `lm_head`, `model.mm_projector.*`, optionally `model.vision_tower.vision_tower.*`);
- stage-1 projector: `mm_projector.bin` (SRC itself or inside SRC), on top of `model_base`;
- LoRA: `adapter_config.json` + `adapter_model.safetensors|.bin` (+ `non_lora_trainables.bin` with the
  projector), merged onto `model_base` with PEFT (`set_peft_model_state_dict` + `merge_and_unload`; the
  adapter's `base_model.model.model.layers.*` names are exactly those of a PEFT-wrapped
  `LlamaForCausalLM`, so PEFT applies it as is and handles scaling, rank patterns and rsLoRA).

LLaVA-NeXT (`image_aspect_ratio: "anyres"`, `mm_patch_merge_type` `spatial_unpad` / `spatial` / `flat`,
`model.image_newline`) becomes an `anyres` hf-llava model. The original treats sizes as (width, height) (PIL's
`.size`), so each `image_grid_pinpoints` pair is swapped to our [height, width]; the checkpoint's grid is kept.

The vision tower comes from the checkpoint when saved, else from `vision_tower` (a CLIP folder; its
config and image processor are always read from there; AnyRes applies the latter to every tile). The original
tokenizer has no `<image>` token (it spliced at the sentinel -200): `<image>` (and `<pad>` when missing) are
added and the embedding / lm_head rows of the new ids are set to the mean of the existing rows.

Memory: full and stage-1 conversions stream one shard at a time; the LoRA path materialises the base
LM (PEFT merges on a loaded model).
"""

import ast
import re
from dataclasses import replace
from pathlib import Path
from typing import Optional, Union

import torch
from transformers import AutoTokenizer

from ..modeling import LlavaConfig, LlavaForConditionalGeneration
from ..modeling.configuration_llava import PATCH_MERGE_TYPES, projector_depth
from ..processing import LlavaProcessor
from ..builder import build_processor, tower_config
from .._io import atomic_output
from .._loading import refuse_quantized
from .common import (
    DROP,
    ConversionError,
    KeyRule,
    PathLike,
    TensorSource,
    expected_state,
    file_sources,
    key_names,
    load_tensors,
    read_json,
    weight_files,
    write_converted,
)
from .llava_hf import save_hf_llava_config

_TEXT_MODEL_TYPES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral"}
# Fields of an original config.json that describe the multimodal wrapper, not the LM.
_WRAPPER_FIELDS = {
    "architectures", "model_type", "_name_or_path", "transformers_version", "image_aspect_ratio",
    "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side", "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter", "use_mm_proj", "unfreeze_mm_vision_tower", "auto_map",
}
_CLIP_TEXT_HALF = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
_EMBEDDINGS = ("model.language_model.embed_tokens.weight", "lm_head.weight")


def _lm_config(raw: dict, origin: Path) -> dict:
    """The LM part of a config.json (an original LLaVA one, or a plain causal LM's)."""
    model_type = raw.get("model_type", "llama")
    model_type = _TEXT_MODEL_TYPES.get(model_type, model_type)
    if model_type.startswith("llava"):
        raise ConversionError(
            f"{origin}: model_type {raw['model_type']!r} is not supported; expected one of "
            f"{sorted(_TEXT_MODEL_TYPES)} (LLaVA on Llama / Vicuna or Mistral)."
        )
    fields = {k: v for k, v in raw.items() if k not in _WRAPPER_FIELDS and not k.startswith("mm_")}
    fields.pop("torch_dtype", None), fields.pop("dtype", None)
    return {**fields, "model_type": model_type}


def _mm_settings(raw: Optional[dict], origin: Path, projector_keys: list[str]) -> dict:
    """hf-llava config fields from the `mm_*` fields (defaults: the original code's; v1.5's without a config)."""
    if raw is None:  # a bare mm_projector.bin: assume the LLaVA-1.5 recipe
        raw = {"mm_vision_select_layer": -2, "image_aspect_ratio": "pad"}
    if raw.get("mm_use_im_start_end"):
        raise ConversionError(
            f"{origin}: mm_use_im_start_end=True (a LLaVA v1 checkpoint) is not supported. Such models were "
            "trained with every image wrapped in <im_start> ... <im_end> tokens; hf-llava's processor and chat "
            "templates never emit them, so the converted model would see prompts unlike its training data. "
            "Convert a LLaVA-1.5 (or later) checkpoint instead."
        )
    aspect = raw.get("image_aspect_ratio", "square")
    merge = raw.get("mm_patch_merge_type", "flat")  # the original's default
    if aspect not in ("pad", "square", "anyres"):
        raise ConversionError(f"{origin}: image_aspect_ratio={aspect!r}; expected 'pad', 'square' or 'anyres'.")
    if aspect == "anyres" and merge not in PATCH_MERGE_TYPES:
        raise ConversionError(f"{origin}: mm_patch_merge_type={merge!r}; expected one of "
                              f"{', '.join(PATCH_MERGE_TYPES)} with image_aspect_ratio='anyres'.")
    if aspect != "anyres" and merge != "flat":
        raise ConversionError(
            f"{origin}: mm_patch_merge_type={merge!r} with image_aspect_ratio={aspect!r}; a non-flat packing "
            "applies to image_aspect_ratio='anyres' (LLaVA-NeXT) only. Expected 'flat' (or no mm_patch_merge_type)."
        )
    next_fields = {} if aspect != "anyres" else {
        "image_grid_pinpoints": _grid_pinpoints(raw.get("image_grid_pinpoints"), origin),
        "patch_merge_type": merge,
    }
    feature = raw.get("mm_vision_select_feature", "patch")
    strategies = {"patch": "default", "cls_patch": "full"}
    if feature not in strategies:
        raise ConversionError(f"{origin}: mm_vision_select_feature={feature!r}; expected 'patch' or 'cls_patch'.")
    projector_type = raw.get("mm_projector_type") or _projector_type_from_keys(projector_keys, origin)
    projector_depth(projector_type)  # validates the name
    return {
        "projector_type": projector_type,
        "vision_feature_layer": raw.get("mm_vision_select_layer", -1),
        "vision_feature_select_strategy": strategies[feature],
        "image_aspect_ratio": aspect,
        "next": next_fields,  # LlavaConfig fields of AnyRes
        "mm_hidden_size": raw.get("mm_hidden_size"),
        "mm_vision_tower": raw.get("mm_vision_tower"),
    }


def _grid_pinpoints(value, origin: Path) -> list[list[int]]:
    """The original's `image_grid_pinpoints`, (width, height) pairs (or their Python literal as a string, which the
    original evaluates) -> ours, [height, width] pairs in the same order (which breaks ties between grids)."""
    example = "[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]"
    pairs = value
    if isinstance(value, str):
        if re.search(r"\(\s*\d+\s*x\s*\d+\s*\)", value):
            raise ConversionError(
                f"{origin}: image_grid_pinpoints={value!r} is the tile-range form of later LLaVA-NeXT forks, which "
                f"hf-llava does not read. Write the resolutions in config.json as [width, height] pairs in pixels, "
                f"e.g. {example}."
            )
        try:
            pairs = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pairs = None
    try:
        return [[int(height), int(width)] for width, height in pairs]
    except (TypeError, ValueError):
        raise ConversionError(
            f"{origin}: image_aspect_ratio='anyres' with image_grid_pinpoints={value!r}; expected a list of "
            f"[width, height] pairs in pixels, e.g. {example}."
        ) from None


def _projector_type_from_keys(keys: list[str], origin: Path) -> str:
    if "model.mm_projector.weight" in keys:
        return "linear"
    indices = {int(m.group(1)) for k in keys if (m := re.match(r"model\.mm_projector\.(\d+)\.weight$", k))}
    if not indices:
        raise ConversionError(
            f"{origin}: no projector weights (model.mm_projector.*) and no mm_projector_type in its config; "
            "expected a LLaVA checkpoint with its projector, or a stage-1 mm_projector.bin (with --model-base)."
        )
    return f"mlp{len(indices)}x_gelu"


def _map_original_key(expected: dict, loaded_name) -> KeyRule:
    """Original LLaVA names -> ours; derived buffers (rotary `inv_freq`, CLIP `position_ids`) are dropped.

    Targets are spelled as in transformers 4.57's llava; `loaded_name` (see `key_names`) turns them into this
    line's parameter names (5.x's CLIP tower has no `vision_model.` level).
    """

    def map_key(key: str):
        if key.endswith("rotary_emb.inv_freq") or key.endswith("embeddings.position_ids"):
            return DROP
        target = None
        if key.startswith("model.mm_projector."):
            parts = key[len("model.mm_projector."):].split(".")
            if len(parts) == 1:  # linear projector: model.mm_projector.weight
                target = f"model.multi_modal_projector.linear_1.{parts[0]}"
            elif len(parts) == 2 and parts[0].isdigit() and int(parts[0]) % 2 == 0:  # Sequential(Linear, GELU, ...)
                target = f"model.multi_modal_projector.linear_{int(parts[0]) // 2 + 1}.{parts[1]}"
        elif key == "model.image_newline":  # NeXT's spatial_unpad row end
            target = "image_newline"
        elif key.startswith("model.vision_tower.vision_tower."):
            target = "model.vision_tower." + key[len("model.vision_tower.vision_tower."):]
        elif key.startswith("model."):
            target = "model.language_model." + key[len("model."):]
        elif key.startswith("lm_head."):
            target = key
        target = target and loaded_name(target)
        return target if target in expected else None

    return map_key


def _map_clip_key(expected: dict, loaded_name) -> KeyRule:
    """A CLIP folder (CLIPVisionModel or CLIPModel) -> our vision tower; CLIPModel's text half is unused by LLaVA."""

    def map_key(key: str):
        if key.startswith(_CLIP_TEXT_HALF) or key.endswith("embeddings.position_ids"):
            return DROP
        target = loaded_name("model.vision_tower." + key)
        return target if target in expected else None

    return map_key


def _merged_lora_lm(src: Path, model_base: Path) -> dict[str, torch.Tensor]:
    """The base LM with the LoRA adapter of `src` merged in (PEFT), as an original-layout state dict."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    files = [src / name for name in ("adapter_model.safetensors", "adapter_model.bin") if (src / name).is_file()]
    if not files:
        raise ConversionError(f"{src}: adapter_config.json but no adapter_model.safetensors or adapter_model.bin.")
    adapter = load_tensors(files[0])
    lm = AutoModelForCausalLM.from_pretrained(model_base, dtype="auto")  # the whole base LM in memory
    peft_model = get_peft_model(lm, LoraConfig.from_pretrained(src))
    result = set_peft_model_state_dict(peft_model, adapter)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if unexpected or missing:
        raise ConversionError(
            f"{files[0]} does not fit the LoRA of adapter_config.json on {model_base}: unexpected {unexpected[:20]}, "
            f"missing {missing[:20]}. Check --model-base (the LM the adapter was trained on)."
        )
    return peft_model.merge_and_unload().state_dict()


def _new_rows(weight: torch.Tensor, vocab_size: int, new_ids: list[int]) -> torch.Tensor:
    """`weight` (old_vocab, H) -> (vocab_size, H); rows of `new_ids` = mean of the old rows (as mean_resizing)."""
    mean = weight.float().mean(dim=0).to(weight.dtype)
    extra = mean.expand(vocab_size - weight.shape[0], -1)
    out = torch.cat([weight, extra], dim=0)
    out[new_ids] = mean
    return out


def _checkpoint_kind(src: Path, model_base: Optional[PathLike]) -> tuple[str, Optional[dict]]:
    """("full" | "projector" | "lora", SRC's config.json or None), told apart by the files in SRC."""
    if not src.exists():
        raise ConversionError(f"{src} does not exist; pass an original LLaVA checkpoint folder or mm_projector.bin.")
    raw = read_json(src / "config.json") if (src / "config.json").is_file() else None
    if (src / "adapter_config.json").is_file():
        kind = "lora"
    else:
        kind = "projector" if src.is_file() or (src / "mm_projector.bin").is_file() else "full"
    if kind != "full" and model_base is None:
        raise ConversionError(
            f"{src} is a {kind} checkpoint: pass model_base (--model-base), the LM it was trained on."
        )
    if kind == "full" and raw is None:
        raise ConversionError(
            f"{src}: no config.json; expected an original LLaVA folder (config.json with mm_* fields)."
        )
    return kind, raw


def _original_sources(kind: str, src: Path, model_base: Optional[PathLike]) -> list[TensorSource]:
    """The checkpoint's tensors in the original layout, listed by name before any is read (no key rule yet)."""
    if kind == "full":
        return file_sources(weight_files(src), None)
    if kind == "projector":
        projector_file = src if src.is_file() else src / "mm_projector.bin"
        return file_sources(weight_files(model_base), None) + file_sources([projector_file], None)
    # lora: the merged LM plus the projector of non_lora_trainables.bin (which wins, as in the original loader)
    tensors = _merged_lora_lm(src, Path(model_base))
    if (src / "non_lora_trainables.bin").is_file():
        extra = load_tensors(src / "non_lora_trainables.bin")
        tensors.update({k.removeprefix("base_model.model."): v for k, v in extra.items()})
    return [TensorSource(str(src), list(tensors), lambda: tensors, None)]


def _vision_tower(src: Path, vision_tower: Optional[PathLike], mm: dict):
    """(path, vision config) of the CLIP tower: `vision_tower`, else the config's `mm_vision_tower`."""
    vision_path = vision_tower or mm["mm_vision_tower"]
    if vision_path is None:
        raise ConversionError(f"{src}: no vision tower given; pass vision_tower (--vision-tower PATH, a CLIP folder).")
    try:
        vision_config = tower_config(vision_path)
    except OSError as error:
        raise ConversionError(
            f"Cannot read the vision tower {vision_path!s}: {error}. Pass --vision-tower PATH, a local folder of "
            f"the CLIP model the checkpoint names ({mm['mm_vision_tower']})."
        ) from error
    layers = 1 if isinstance(mm["vision_feature_layer"], int) else len(mm["vision_feature_layer"])
    if mm["mm_hidden_size"] not in (None, vision_config.hidden_size * layers):
        raise ConversionError(
            f"{src}: mm_hidden_size={mm['mm_hidden_size']} but the vision tower {vision_path} has hidden size "
            f"{vision_config.hidden_size}; pass the --vision-tower the checkpoint was trained with."
        )
    return vision_path, vision_config


def _processor(src: Path, lm_origin: Path, vision_path, chat_template: str, mm: dict) -> tuple[LlavaProcessor, int]:
    """The processor (SRC's tokenizer, else the LM's, with `<image>` / `<pad>` added) and the tokenizer's
    length before those were added."""
    tokenizer_origin = src if src.is_dir() and (src / "tokenizer_config.json").is_file() else lm_origin
    old_len = len(AutoTokenizer.from_pretrained(tokenizer_origin))
    processor = build_processor(
        str(vision_path), str(tokenizer_origin), chat_template=chat_template,
        image_aspect_ratio=mm["image_aspect_ratio"],
        vision_feature_select_strategy=mm["vision_feature_select_strategy"],
        **mm["next"],  # AnyRes: the grid and the packing
    )
    return processor, old_len


def _llava_config(
    lm_raw: dict, lm_origin: Path, vision_config, processor, mm: dict, old_vocab: int, dtype_name: Optional[str]
) -> LlavaConfig:
    """The hf-llava config: the LM's fields (vocabulary grown to the tokenizer's), the tower's, the `mm_*` settings."""
    pad_token_id = processor.tokenizer.pad_token_id
    text_config = _lm_config(lm_raw, lm_origin)
    text_config.update(vocab_size=max(old_vocab, len(processor.tokenizer)), pad_token_id=pad_token_id)
    return LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config,
        image_token_index=processor.image_token_id,
        projector_type=mm["projector_type"],
        vision_feature_layer=mm["vision_feature_layer"],
        vision_feature_select_strategy=mm["vision_feature_select_strategy"],
        image_aspect_ratio=mm["image_aspect_ratio"],
        pad_token_id=pad_token_id,
        dtype=dtype_name,
        **mm["next"],
    )


def _tensor_transform(dtype_name: Optional[str], vocab_size: int, old_vocab: int, new_ids: list[int]):
    """Per written tensor: embedding / lm_head rows for the added tokens (`_new_rows`), then the LM's dtype."""
    dtype = getattr(torch, dtype_name) if isinstance(dtype_name, str) else None

    def transform(name: str, tensor: torch.Tensor) -> torch.Tensor:
        if name in _EMBEDDINGS and tensor.shape[0] == old_vocab:
            tensor = _new_rows(tensor, vocab_size, new_ids)
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor

    return transform


def convert_original_to_hf_llava(
    src: PathLike,
    dst: PathLike,
    vision_tower: Optional[PathLike] = None,
    model_base: Optional[PathLike] = None,
    chat_template: str = "vicuna_v1",
    max_shard_size: Union[int, str] = "5GB",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """An original LLaVA checkpoint (1.5 or NeXT; full, stage-1 `mm_projector.bin` or LoRA) -> an hf-llava folder
    at `dst`.

    `vision_tower`: a local CLIP folder (defaults to the config's `mm_vision_tower`, resolved by
    transformers, i.e. from the HF cache when offline). `model_base`: the LM folder under a stage-1
    projector or a LoRA adapter. `chat_template`: a name from `CHAT_TEMPLATES` or Jinja source.
    """
    src = Path(src)
    for folder in (src, model_base):
        if folder is not None and Path(folder).is_dir():
            refuse_quantized(folder, "hf-llava convert")
    kind, raw = _checkpoint_kind(src, model_base)
    lm_origin = src if kind == "full" else Path(model_base)
    lm_raw = raw if kind == "full" else read_json(lm_origin / "config.json")
    llava_sources = _original_sources(kind, src, model_base)
    all_keys = [k for s in llava_sources for k in s.keys]
    mm = _mm_settings(raw, src, [k for k in all_keys if k.startswith("model.mm_projector.")])
    vision_path, vision_config = _vision_tower(src, vision_tower, mm)

    processor, old_len = _processor(src, lm_origin, vision_path, chat_template, mm)
    new_ids = [i for i in {processor.image_token_id, processor.tokenizer.pad_token_id} if i >= old_len]
    old_vocab = lm_raw.get("vocab_size", old_len)  # embedding rows in the checkpoint
    dtype_name = lm_raw.get("torch_dtype") or lm_raw.get("dtype")
    config = _llava_config(lm_raw, lm_origin, vision_config, processor, mm, old_vocab, dtype_name)

    expected = expected_state(LlavaForConditionalGeneration, config)
    loaded_name, saved_names = key_names(config)
    sources = [replace(source, map_key=_map_original_key(expected, loaded_name)) for source in llava_sources]
    if not any(k.startswith("model.vision_tower.") for k in all_keys):  # tower not saved: take the CLIP folder's
        sources += file_sources(weight_files(vision_path), _map_clip_key(expected, loaded_name))
    transform = _tensor_transform(dtype_name, config.text_config.vocab_size, old_vocab, new_ids)
    with atomic_output(dst, overwrite) as tmp:
        write_converted(sources, expected, saved_names, tmp, src, max_shard_size, transform, progress)
        save_hf_llava_config(config, tmp)
        processor.save_pretrained(tmp)
    return Path(dst)

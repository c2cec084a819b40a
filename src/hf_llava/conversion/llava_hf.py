"""llava-hf (transformers' `LlavaForConditionalGeneration`, `model_type="llava"`, and
`LlavaNextForConditionalGeneration`, `model_type="llava_next"`) <-> hf-llava, lossless.

Parameter names are the same on both sides, so a conversion is a config mapping plus a shard-by-shard
copy of bit-identical tensors. The family follows the config: `llava_next` <-> `image_aspect_ratio="anyres"`
(its `image_grid_pinpoints` carried both ways, `image_newline` among the tensors), `llava` <-> `pad` / `square`.
Any layout `from_pretrained` reads on this transformers line is read (the one 4.57's `save_pretrained` writes,
`language_model.model.*`, `language_model.lm_head.*`, `vision_tower.vision_model.*`, `multi_modal_projector.*`,
`image_newline`, or the in-memory names `model.language_model.*`...); the former is written, on 4.57 and 5.x
alike, so a folder converted on one line loads on the other.
The processor (tokenizer files, image processor, patch size, strategy, chat template) is carried over.
Only the `mlp2x_gelu` projector exists in transformers, and only the `spatial_unpad` packing in its
`llava_next`: others are refused.
Also home of `save_hf_llava_config`, which writes an hf-llava folder's config files.
"""

import json
from pathlib import Path
from typing import Optional, Union

import torch
import transformers
from transformers import GenerationConfig
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME

from ..modeling import LlavaConfig, LlavaForConditionalGeneration
from ..processing import LlavaProcessor, get_chat_template
from ..modeling.configuration_llava import add_legacy_rope_fields
from ..processing.processing_llava import strip_json_fields, write_portable_processor_files
from .._io import atomic_output
from .._loading import refuse_quantized
from .common import (
    DROP,
    ConversionError,
    KeyRule,
    PathLike,
    expected_state,
    file_sources,
    key_names,
    read_json,
    weight_files,
    write_converted,
)

_OUR_ONLY_FIELDS = ("projector_type", "image_aspect_ratio", "patch_merge_type", "auto_map")


# transformers' families by `model_type`: llava (fixed resolution), llava_next (AnyRes, `spatial_unpad` only).
_CLASS_PREFIXES = {"llava": "Llava", "llava_next": "LlavaNext"}


def _transformers_classes(model_type: str) -> tuple[type, type, type]:
    """(config, model, processor) classes of transformers' `model_type` family."""
    prefix = _CLASS_PREFIXES[model_type]
    return tuple(getattr(transformers, prefix + suffix) for suffix in ("Config", "ForConditionalGeneration",
                                                                         "Processor"))


def save_hf_llava_config(
    config: LlavaConfig, folder: PathLike, generation_config: Optional[GenerationConfig] = None
) -> None:
    """Write `config.json`, `generation_config.json` and (with `auto_map`) the module files, as
    `save_pretrained` does."""
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    config.architectures = [type(model).__name__]
    if model._auto_class is not None:  # hf_llava registers it: trust_remote_code copies, like save_pretrained
        custom_object_save(model, folder, config=config)
        model.add_auto_map_aliases()
    config.save_pretrained(folder)
    (generation_config or GenerationConfig.from_model_config(config)).save_pretrained(folder)


def _generation_config(src: Path) -> Optional[GenerationConfig]:
    return GenerationConfig.from_pretrained(src) if (src / "generation_config.json").is_file() else None


def _map_key(expected: dict, loaded_name) -> KeyRule:
    """Either layout on disk (`loaded_name`, see `key_names`) -> the parameter name; None for a key the model lacks.

    With tied embeddings `expected` has no `lm_head.weight`; a checkpoint that stores it anyway (as some
    writers do) has it consumed, not refused: the model ties it to the input embeddings on load.
    """
    def rule(key: str):
        name = loaded_name(key)
        if name in expected:
            return name
        if name in LlavaForConditionalGeneration._tied_weights_keys:  # not expected: tied
            return DROP
        return None

    return rule


def convert_llava_hf_to_hf_llava(
    src: PathLike,
    dst: PathLike,
    chat_template: Optional[str] = None,
    max_shard_size: Union[int, str] = "5GB",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """A llava-hf folder (e.g. `llava-hf/llava-1.5-7b-hf` or `llava-hf/llava-v1.6-mistral-7b-hf`, downloaded) ->
    an hf-llava folder at `dst` (`llava_next`: an `anyres` one with the source's grid).

    Tensors are copied bit for bit; `chat_template` (a name from `CHAT_TEMPLATES` or Jinja) replaces the
    source's template, which is kept otherwise (`vicuna_v1` when the source has none).
    """
    src = Path(src)
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src}: no config.json; pass a llava-hf model folder.")
    refuse_quantized(src, "hf-llava convert")
    raw = read_json(src / "config.json")
    if raw.get("model_type") not in _CLASS_PREFIXES:
        raise ConversionError(
            f"{src}/config.json has model_type={raw.get('model_type')!r}; --from llava-hf expects 'llava' or "
            "'llava_next' (use --from original for haotian-liu/LLaVA checkpoints, or the folder is already hf-llava)."
        )
    # Our class reads transformers' llava processor files too, with the PIL image processor and the tokenizer
    # as they are (transformers' own class would pick another image processor backend, with a notice).
    processor = LlavaProcessor.from_pretrained(src)
    image_processor = processor.image_processor
    dropped = ("model_type", "architectures", "transformers_version", "auto_map")
    fields = {k: v for k, v in raw.items() if k not in dropped}
    # transformers writes 576 whatever the tower; ours derives it from the tower and checks it.
    fields.pop("image_seq_length", None)
    fields["projector_type"] = "mlp2x_gelu"
    if raw["model_type"] == "llava_next":  # its grid (`image_grid_pinpoints`) is among the fields
        fields.update(image_aspect_ratio="anyres", patch_merge_type="spatial_unpad")
    else:
        fields["image_aspect_ratio"] = "pad" if getattr(image_processor, "do_pad", False) else "square"
    config = LlavaConfig(**fields)

    template = chat_template or processor.chat_template or "vicuna_v1"
    ours = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=processor.tokenizer,
        patch_size=processor.patch_size or config.vision_config.patch_size,
        vision_feature_select_strategy=(
            processor.vision_feature_select_strategy or config.vision_feature_select_strategy
        ),
        chat_template=get_chat_template(template),
        image_token=processor.image_token,
        num_additional_image_tokens=getattr(processor, "num_additional_image_tokens", None)
        or config.num_additional_image_tokens,
        image_seq_length=config.num_image_tokens,
        patch_merge_type=config.patch_merge_type,
    )
    expected = expected_state(LlavaForConditionalGeneration, config)
    loaded_name, saved_names = key_names(config)
    with atomic_output(dst, overwrite) as tmp:
        write_converted(
            file_sources(weight_files(src), _map_key(expected, loaded_name)), expected, saved_names, tmp, src,
            max_shard_size, progress=progress,
        )
        save_hf_llava_config(config, tmp, _generation_config(src))
        ours.save_pretrained(tmp)
    return Path(dst)


def transformers_config(config: LlavaConfig, name: str = "this model"):
    """Our config as transformers' own: a `transformers.LlavaConfig`, or a `LlavaNextConfig` for an `anyres` model
    (same fields, ours dropped); `name` names the model in the refusals (projectors and packings transformers lacks).
    """
    if config.projector_type != "mlp2x_gelu":
        raise ConversionError(
            f"{name} has projector_type={config.projector_type!r}; transformers' llava has only the 'mlp2x_gelu' "
            "projector (linear_1, GELU, linear_2), so this model has no llava-hf equivalent. Keep it in hf-llava "
            "format (it loads with trust_remote_code=True) or retrain with projector_type='mlp2x_gelu'."
        )
    anyres = config.image_aspect_ratio == "anyres"
    if anyres and config.patch_merge_type != "spatial_unpad":
        raise ConversionError(
            f"{name} has patch_merge_type={config.patch_merge_type!r}; transformers' llava_next packs AnyRes tiles "
            "only as 'spatial_unpad' (with image_newline), so this model has no llava-hf equivalent. Keep it in "
            "hf-llava format (it loads with trust_remote_code=True) or retrain with patch_merge_type='spatial_unpad'."
        )
    config_cls, model_cls, _ = _transformers_classes("llava_next" if anyres else "llava")
    dropped = (*_OUR_ONLY_FIELDS, "model_type", "transformers_version")
    if not anyres:
        dropped += ("image_grid_pinpoints",)
    fields = {k: v for k, v in config.to_dict().items() if k not in dropped}
    fields["architectures"] = [model_cls.__name__]
    return config_cls(**fields)


def convert_hf_llava_to_llava_hf(
    src: PathLike,
    dst: PathLike,
    max_shard_size: Union[int, str] = "5GB",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """An hf-llava folder -> a llava-hf folder that stock transformers loads without remote code:
    `LlavaForConditionalGeneration` / `AutoProcessor` -> transformers' `LlavaProcessor`, or for an `anyres` model
    `LlavaNextForConditionalGeneration` / `LlavaNextProcessor` (its grid carried over)."""
    src = Path(src)
    raw = read_json(src / "config.json") if (src / "config.json").is_file() else {}
    if raw.get("model_type") != LlavaConfig.model_type:
        raise ConversionError(f"{src}: expected an hf-llava folder (config.json with model_type 'hf_llava').")
    refuse_quantized(src, "hf-llava convert")
    config = LlavaConfig.from_pretrained(src)
    target_config = transformers_config(config, str(src))
    _, model_cls, processor_cls = _transformers_classes(target_config.model_type)

    ours = LlavaProcessor.from_pretrained(src)
    processor = processor_cls(
        image_processor=ours.image_processor,
        tokenizer=ours.tokenizer,
        patch_size=ours.patch_size,
        vision_feature_select_strategy=ours.vision_feature_select_strategy,
        chat_template=ours.chat_template,
        image_token=ours.image_token,
        num_additional_image_tokens=ours.num_additional_image_tokens,
    )
    expected = expected_state(model_cls, target_config)
    loaded_name, saved_names = key_names(config)  # transformers' llava(_next) has our parameter names (mlp2x_gelu)
    with atomic_output(dst, overwrite) as tmp:
        write_converted(
            file_sources(weight_files(src), _map_key(expected, loaded_name)), expected, saved_names, tmp, src,
            max_shard_size, progress=progress,
        )
        target_config.save_pretrained(tmp)
        # transformers' config saved on 5.x: the RoPE fields 4.57 reads too (ours writes them itself)
        saved = read_json(Path(tmp) / "config.json")
        add_legacy_rope_fields(saved.get("text_config", {}))
        (Path(tmp) / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        (_generation_config(src) or GenerationConfig.from_model_config(target_config)).save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_portable_processor_files(tmp)  # the 4.57 layout, which both lines read
        # Our classes registered `auto_map` on the tokenizer / image processor: stock transformers must not see it.
        kept = (SAFE_WEIGHTS_INDEX_NAME, "tokenizer.json")
        strip_json_fields([p for p in Path(tmp).glob("*.json") if p.name not in kept], ("auto_map",))
    return Path(dst)

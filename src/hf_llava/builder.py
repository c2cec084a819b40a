"""A fresh LLaVA from a pretrained vision tower and a pretrained causal LM: the start of stage 1.

Owns everything the model and the processor must agree on when built from parts: the tokenizer
(loaded once, with `<image>` and a pad token added), the feature strategy (`default` drops CLS for
CLIP-like towers, `full` for towers without one such as SigLIP), and the visual tokens per image
(the config's count, stored in the processor; AnyRes: the grids and the packing). It lives outside
the files copied next to checkpoints for `trust_remote_code`, which only need to load what this builds.
"""

import copy
from typing import Optional

from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer

from ._compat import PIL_IMAGE_PROCESSOR_KWARGS, pil_image_processor
from .modeling import LlavaConfig, LlavaForConditionalGeneration
from .modeling.configuration_llava import IMAGE_ASPECT_RATIOS, default_grid_pinpoints, has_cls_token
from .modeling.modeling_llava import LlavaMultiModalProjector
from .processing import LlavaProcessor, add_llava_tokens


def tower_config(vision_name_or_path: str):
    """The vision tower's config from a tower folder or a whole CLIP / SigLIP folder."""
    config = AutoConfig.from_pretrained(vision_name_or_path)
    return getattr(config, "vision_config", config)


def image_processor_for(
    vision_name_or_path: str, image_aspect_ratio: str = "pad", image_grid_pinpoints: Optional[list[list[int]]] = None
):
    """The tower's image processor; `pad` (LLaVA-1.5) pads to a square with the mean colour first,
    `square` (LLaVA v1, and stage 1 of the 1.5 recipe) keeps the tower's resize and centre crop, `anyres`
    (LLaVA-NeXT) is transformers' `LlavaNextImageProcessor` with the tower's settings, cutting each image into
    tower-sized tiles at `image_grid_pinpoints` (default: the released 1.6 grids at the tower's image size)."""
    if image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
        raise ValueError(f"image_aspect_ratio={image_aspect_ratio!r}: expected one of "
                         f"{', '.join(IMAGE_ASPECT_RATIOS)}.")
    image_processor = AutoImageProcessor.from_pretrained(vision_name_or_path, **PIL_IMAGE_PROCESSOR_KWARGS)
    if image_aspect_ratio == "square":
        return image_processor
    settings = {k: v for k, v in image_processor.to_dict().items() if not k.startswith("_")}
    settings.pop("image_processor_type", None)
    if "crop_size" not in settings:  # e.g. SigLIP: resize to the tower's size, no crop to fill in
        settings.update(do_center_crop=False, crop_size=settings.get("size"))
    if image_aspect_ratio == "anyres":
        if image_grid_pinpoints is None:
            image_grid_pinpoints = default_grid_pinpoints(tower_config(vision_name_or_path).image_size)
        return pil_image_processor("LlavaNextImageProcessor")(
            **{**settings, "image_grid_pinpoints": image_grid_pinpoints, "do_pad": True})
    return pil_image_processor("LlavaImageProcessor")(**{**settings, "do_pad": True})


def processor_for_config(
    image_processor, tokenizer, config: LlavaConfig, chat_template: str = "vicuna_v1", image_token: str = "<image>"
) -> LlavaProcessor:
    """A `LlavaProcessor` that agrees with `config`: the tower's patch size, the feature strategy and the visual
    tokens per image (`config.num_image_tokens`; AnyRes: per tile, and the packing), the one place a processor takes
    them from a config."""
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=chat_template,
        image_token=image_token,
        num_additional_image_tokens=config.num_additional_image_tokens,
        image_seq_length=config.num_image_tokens,
        patch_merge_type=config.patch_merge_type,
    )


def _llava_tokenizer(text_name_or_path: str, image_token: str):
    """The LM's tokenizer with `image_token` (and a pad token when it has none) added."""
    tokenizer = AutoTokenizer.from_pretrained(text_name_or_path)
    add_llava_tokens(tokenizer, image_token)
    return tokenizer


def _feature_strategy(vision_config, given: Optional[str]) -> str:
    """`given`, else `default` (drop CLS) for towers with a CLS token and `full` for the others (SigLIP)."""
    return given or ("default" if has_cls_token(vision_config) else "full")


def build_processor(
    vision_name_or_path: str,
    text_name_or_path: str,
    chat_template: str = "vicuna_v1",
    image_aspect_ratio: str = "pad",
    vision_feature_select_strategy: Optional[str] = None,
    image_token: str = "<image>",
    image_grid_pinpoints: Optional[list[list[int]]] = None,
    patch_merge_type: str = "spatial_unpad",
) -> LlavaProcessor:
    """The processor of a LLaVA built from these parts (see `from_vision_and_text`); `image_grid_pinpoints` and
    `patch_merge_type` are AnyRes's (`LlavaConfig`'s)."""
    vision_config = tower_config(vision_name_or_path)
    strategy = _feature_strategy(vision_config, vision_feature_select_strategy)
    config = LlavaConfig(vision_config=vision_config.to_dict(), vision_feature_select_strategy=strategy,
                         image_aspect_ratio=image_aspect_ratio, image_grid_pinpoints=image_grid_pinpoints,
                         patch_merge_type=patch_merge_type)
    image_processor = image_processor_for(vision_name_or_path, image_aspect_ratio, config.image_grid_pinpoints)
    return processor_for_config(image_processor, _llava_tokenizer(text_name_or_path, image_token), config,
                                chat_template, image_token)


def from_vision_and_text(
    vision_name_or_path: str,
    text_name_or_path: str,
    chat_template: str = "vicuna_v1",
    image_aspect_ratio: str = "pad",
    image_token: str = "<image>",
    dtype=None,
    **config_kwargs,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A fresh LLaVA and its processor from a pretrained tower and a pretrained causal LM.

    The LM's tokenizer gets `image_token` (and a pad token when it has none), the embeddings grow to
    the new vocabulary when it outgrows them (new rows start at the mean of the others), the LM's
    generation config (stop tokens, sampling defaults) is kept, and the projector is random.
    `image_aspect_ratio="anyres"` makes a LLaVA-NeXT: AnyRes tiles (`LlavaNextImageProcessor`) and, with
    `spatial_unpad`, a fresh `image_newline`. `dtype` is passed to both `from_pretrained` calls (None: transformers'
    default); `config_kwargs` go to `LlavaConfig` (`projector_type`, `vision_feature_layer`, `image_grid_pinpoints`,
    `patch_merge_type`, ...). The processor is made from the finished config, so the two agree.
    """
    import torch

    # `torch_dtype` is the older spelling: both lines warn when it reaches `from_pretrained`, even as None
    dtype = config_kwargs.pop("torch_dtype", None) if dtype is None else dtype
    load_kwargs = {} if dtype is None else {"dtype": dtype}

    vision_config = tower_config(vision_name_or_path)
    strategy = _feature_strategy(vision_config, config_kwargs.pop("vision_feature_select_strategy", None))
    tokenizer = _llava_tokenizer(text_name_or_path, image_token)
    text_model = AutoModelForCausalLM.from_pretrained(text_name_or_path, **load_kwargs)
    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_model.config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(image_token),
        vision_feature_select_strategy=strategy,
        image_aspect_ratio=image_aspect_ratio,
        **config_kwargs,
    )
    config.base_models = [vision_name_or_path, text_name_or_path]
    image_processor = image_processor_for(vision_name_or_path, image_aspect_ratio, config.image_grid_pinpoints)
    processor = processor_for_config(image_processor, tokenizer, config, chat_template, image_token)
    # Build the shell on the meta device, then plug in the pretrained parts: no second copy of the LM.
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    tower_cls = type(model.model.vision_tower)  # e.g. CLIPVisionModel; loads from a CLIPModel folder too
    model.model.vision_tower = tower_cls.from_pretrained(vision_name_or_path, **load_kwargs)
    model.model.language_model = text_model.get_decoder()
    model.lm_head = text_model.get_output_embeddings()
    model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(text_model.dtype)
    model.model.multi_modal_projector.apply(model._init_weights)  # normal(0, initializer_range), zero bias
    if hasattr(model.model, "image_newline"):  # AnyRes spatial_unpad: drawn as the model's init draws it
        model.model.image_newline = torch.nn.Parameter(
            torch.empty_like(model.model.image_newline, device="cpu", dtype=text_model.dtype))
        model._init_weights(model.model)
    # One config object per part, shared by the LLaVA config and the module using it.
    config.vision_config = model.model.vision_tower.config
    config.text_config = model.model.language_model.config
    config.text_config.pad_token_id = config.pad_token_id = tokenizer.pad_token_id
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:  # never shrink a padded vocabulary
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.generation_config = copy.deepcopy(text_model.generation_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


__all__ = ["build_processor", "from_vision_and_text", "image_processor_for", "processor_for_config", "tower_config"]

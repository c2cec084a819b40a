"""`LlavaConfig`: the configuration of an hf-llava model (vision tower + projector + causal LM).

Mirrors transformers 4.57's `LlavaConfig` field for field (so llava-hf checkpoints convert by config
alone) and adds the projector type of the original LLaVA recipe. `model_type` is `hf_llava`: `llava`
belongs to transformers.

This file is copied next to saved checkpoints for `trust_remote_code` loading: relative imports only.
"""

import json
import re
from typing import Optional, Union

import transformers
from packaging import version
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING
from transformers.utils import logging

logger = logging.get_logger(__name__)

# transformers 5.x or 4.57, by the version: the one place the copied files ask (this file and modeling_llava.py,
# which imports it; they load alone next to checkpoints and cannot import hf_llava._compat, the package's home).
TRANSFORMERS_5 = version.parse(transformers.__version__).major >= 5

PROJECTOR_TYPES = ("linear", "mlp2x_gelu", "mlp{N}x_gelu", "identity")
VISION_FEATURE_SELECT_STRATEGIES = ("default", "full")
IMAGE_ASPECT_RATIOS = ("pad", "square", "anyres")
# How AnyRes (LLaVA-NeXT) lays out the tiles' features, as the original's `mm_patch_merge_type`: `spatial_unpad`
# (the released 1.6 models, and transformers' `llava_next`): the tiles' grid with the padding cut away and a learned
# `image_newline` closing every row; `spatial`: the whole grid, row by row; `flat`: tile after tile.
PATCH_MERGE_TYPES = ("spatial_unpad", "spatial", "flat")
# The released LLaVA-1.6 grids in tiles (rows, columns): 1x2, 2x1, 2x2, 3x1, 1x3; with a 336 tower, the
# `image_grid_pinpoints` of its configs: [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]].
NEXT_GRID_TILES = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))


def default_grid_pinpoints(tile_size: int) -> list[list[int]]:
    """The released LLaVA-1.6 grids as `[height, width]` pixels for tiles of `tile_size` (the tower's image size)."""
    return [[rows * tile_size, cols * tile_size] for rows, cols in NEXT_GRID_TILES]
_MLP_PATTERN = re.compile(r"^mlp(\d+)x_gelu$")
# Vision towers whose sequence starts with a CLS token ("default" drops it).
_TOWERS_WITH_CLS = ("clip_vision_model", "clip", "chinese_clip_vision_model", "metaclip_2_vision_model")


def has_cls_token(vision_config: PretrainedConfig) -> bool:
    """Whether the tower's sequence starts with a CLS token (CLIP does, SigLIP does not)."""
    return vision_config.model_type in _TOWERS_WITH_CLS


def projector_depth(projector_type: str) -> int:
    """Number of linear layers of a projector type (0 for `identity`, 1 for `linear`, N for `mlpNx_gelu`)."""
    if projector_type == "identity":
        return 0
    if projector_type == "linear":
        return 1
    match = _MLP_PATTERN.match(str(projector_type))
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"projector_type={projector_type!r} is not supported; expected one of {', '.join(PROJECTOR_TYPES)} "
            "(e.g. 'mlp2x_gelu' for LLaVA-1.5, 'linear' for LLaVA v1)."
        )
    return int(match.group(1))


def _build_sub_config(config, default_type: str, name: str) -> PretrainedConfig:
    if config is None:
        return CONFIG_MAPPING[default_type]()
    if isinstance(config, PretrainedConfig):
        return config
    if isinstance(config, dict):
        config = dict(config)
        model_type = config.pop("model_type", default_type)
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"{name}: unknown model_type {model_type!r}; expected a model type transformers knows.")
        return CONFIG_MAPPING[model_type](**config)
    raise TypeError(f"{name} must be a PretrainedConfig, a dict or None; got {type(config).__name__}.")


def add_legacy_rope_fields(text_config: dict) -> dict:
    """`text_config` (a config dict, changed in place) with `rope_theta` / `rope_scaling` beside `rope_parameters`.

    transformers >= 5 (feature-detected: the dict has `rope_parameters`) saves RoPE settings in `rope_parameters`
    only; 4.57 ignores that field and would run with its default theta (10000). 5.x reads both spellings and
    prefers `rope_parameters`, so writing both keeps a saved folder the same model on either line.
    """
    params = text_config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params and "rope_theta" not in text_config:
        text_config["rope_theta"] = params["rope_theta"]
        if params.get("rope_type", "default") != "default" and text_config.get("rope_scaling") is None:
            text_config["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    return text_config


class LlavaConfig(PretrainedConfig):
    r"""Configuration of [`LlavaForConditionalGeneration`].

    Args:
        vision_config (`PretrainedConfig` or `dict`, *optional*): the vision tower (CLIP, SigLIP...);
            defaults to CLIP ViT-L/14-336.
        text_config (`PretrainedConfig` or `dict`, *optional*): the causal LM (Llama, Mistral, Qwen2...);
            defaults to Llama-7B.
        image_token_index (`int`, defaults to 32000): id of the `<image>` token in the tokenizer.
        projector_type (`str`, defaults to `"mlp2x_gelu"`): `linear` (LLaVA v1), `mlp{N}x_gelu`
            (`mlp2x_gelu` is LLaVA-1.5) or `identity` (vision width must equal the LM width).
        projector_hidden_act (`str`, defaults to `"gelu"`): activation between projector layers.
        vision_feature_select_strategy (`str`, defaults to `"default"`): `default` drops the CLS token,
            `full` keeps every token.
        vision_feature_layer (`int` or `list[int]`, defaults to -2): hidden state(s) of the tower fed to
            the projector; a list concatenates the layers along the feature axis.
        image_seq_length (`int`, *optional*): visual tokens per image; derived from the vision config
            when not given.
        multimodal_projector_bias (`bool`, defaults to `True`): biases in the projector's linear layers.
        image_aspect_ratio (`str`, defaults to `"pad"`): how images reach the tower: `pad` to a square with the
            mean colour (LLaVA-1.5), `square` (resize and crop, LLaVA v1), both one tile, or `anyres` (LLaVA-NeXT):
            resized to the best of `image_grid_pinpoints`, cut into tower-sized tiles plus a downscaled overview,
            the tiles' features packed per `patch_merge_type` (`pixel_values` `(images, tiles, C, H, W)` with
            `image_sizes`).
        image_grid_pinpoints (`list[list[int]]`, *optional*): AnyRes resolutions as `[height, width]`, each a
            multiple of the tower's image size; defaults to the released LLaVA-1.6 grids (1x2, 2x1, 2x2, 3x1, 1x3
            tiles: `[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]` for a 336 tower).
        patch_merge_type (`str`, defaults to `"spatial_unpad"`): AnyRes packing (`spatial_unpad`, `spatial`,
            `flat`, as the original's `mm_patch_merge_type`); `spatial_unpad` adds the learned `image_newline`.
    """

    model_type = "hf_llava"
    attribute_map = {"image_token_id": "image_token_index"}
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    def __init__(
        self,
        vision_config: Optional[Union[PretrainedConfig, dict]] = None,
        text_config: Optional[Union[PretrainedConfig, dict]] = None,
        image_token_index: int = 32000,
        projector_type: str = "mlp2x_gelu",
        projector_hidden_act: str = "gelu",
        vision_feature_select_strategy: str = "default",
        vision_feature_layer: Union[int, list[int]] = -2,
        image_seq_length: Optional[int] = None,
        multimodal_projector_bias: bool = True,
        image_aspect_ratio: str = "pad",
        image_grid_pinpoints: Optional[list[list[int]]] = None,
        patch_merge_type: str = "spatial_unpad",
        **kwargs,
    ):
        if vision_config is None:  # CLIP ViT-L/14-336, the LLaVA-1.5 tower
            vision_config = CONFIG_MAPPING["clip_vision_model"](
                intermediate_size=4096, hidden_size=1024, patch_size=14, image_size=336,
                num_hidden_layers=24, num_attention_heads=16, projection_dim=768,
            )
        self.vision_config = _build_sub_config(vision_config, "clip_vision_model", "vision_config")
        self.text_config = _build_sub_config(text_config, "llama", "text_config")
        self.image_token_index = image_token_index
        self.projector_type = projector_type
        self.projector_hidden_act = projector_hidden_act
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.vision_feature_layer = (
            list(vision_feature_layer) if isinstance(vision_feature_layer, tuple) else vision_feature_layer
        )
        self.multimodal_projector_bias = multimodal_projector_bias
        self.image_aspect_ratio = image_aspect_ratio
        if image_aspect_ratio == "anyres" and image_grid_pinpoints is None:
            image_grid_pinpoints = default_grid_pinpoints(self.vision_config.image_size)
        self.image_grid_pinpoints = (
            [list(p) for p in image_grid_pinpoints] if isinstance(image_grid_pinpoints, (list, tuple))
            else image_grid_pinpoints
        )
        self.patch_merge_type = patch_merge_type
        self._validate()
        expected = self.num_image_tokens
        if image_seq_length is not None and image_seq_length != expected:
            raise ValueError(
                f"image_seq_length={image_seq_length} disagrees with the vision tower, which yields {expected} "
                f"visual tokens per image (image_size {self.vision_config.image_size}, patch_size "
                f"{self.vision_config.patch_size}, strategy {vision_feature_select_strategy!r}); omit it or fix it."
            )
        self.image_seq_length = expected
        # The LM's special tokens and embedding tying at the top level too: that is where `Trainer`,
        # `generate` and PEFT look (a None token makes Trainer "realign" them with a warning on every run;
        # the default `tie_word_embeddings=True` makes PEFT "find" an untied LM untied by a LoRA merge).
        # transformers itself ties by the text config.
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):
            if kwargs.get(name) is None:
                kwargs[name] = getattr(self.text_config, name, None)
        super().__init__(**kwargs)

    def _validate(self) -> None:
        """Check the LLaVA fields against each other and the towers; errors name the field and the fix."""
        strategy, layer = self.vision_feature_select_strategy, self.vision_feature_layer
        if strategy not in VISION_FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"vision_feature_select_strategy={strategy!r} is not supported; "
                f"expected one of {VISION_FEATURE_SELECT_STRATEGIES}."
            )
        if isinstance(layer, list):
            if not layer or not all(isinstance(x, int) for x in layer):
                raise ValueError(f"vision_feature_layer={layer!r}: expected an int or a non-empty list of ints.")
        elif not isinstance(layer, int):
            raise ValueError(f"vision_feature_layer={layer!r}: expected an int or a list of ints.")
        projector_depth(self.projector_type)  # validates
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio={self.image_aspect_ratio!r}: expected one of "
                             f"{', '.join(IMAGE_ASPECT_RATIOS)}.")
        if self.image_aspect_ratio == "anyres":
            self._validate_anyres()
        num_layers = 1 if isinstance(layer, int) else len(layer)
        vision_width = self.vision_config.hidden_size * num_layers
        if self.projector_type == "identity" and vision_width != self.text_config.hidden_size:
            raise ValueError(
                f"projector_type='identity' needs the vision features ({self.vision_config.hidden_size} x "
                f"{num_layers} layer(s)) to match the LM hidden size ({self.text_config.hidden_size}); "
                "use 'linear' or 'mlp2x_gelu' instead."
            )
        if strategy == "default" and not has_cls_token(self.vision_config):
            logger.warning(
                "vision_feature_select_strategy='default' drops the first token, but a %s tower has no CLS token: "
                "a real image patch is dropped. Use 'full' for such towers.", self.vision_config.model_type
            )

    def _validate_anyres(self) -> None:
        if self.patch_merge_type not in PATCH_MERGE_TYPES:
            raise ValueError(f"patch_merge_type={self.patch_merge_type!r}: expected one of "
                             f"{', '.join(PATCH_MERGE_TYPES)}.")
        tile = self.vision_config.image_size
        pinpoints = self.image_grid_pinpoints
        if not isinstance(pinpoints, list) or not pinpoints or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, int) and x > 0 for x in p) for p in pinpoints
        ):
            raise ValueError(f"image_grid_pinpoints={pinpoints!r}: expected a non-empty list of [height, width] "
                             f"pairs of positive ints, e.g. {default_grid_pinpoints(tile)}.")
        off_grid = [p for p in pinpoints if p[0] % tile or p[1] % tile]
        if off_grid:
            raise ValueError(f"image_grid_pinpoints {off_grid} are not multiples of the vision tower's image size "
                             f"({tile}): each resolution is cut into {tile}x{tile} tiles. Use multiples of {tile}, "
                             f"e.g. {default_grid_pinpoints(tile)}.")
        side = tile // self.vision_config.patch_size
        if self.vision_feature_select_strategy == "default" and not has_cls_token(self.vision_config):
            raise ValueError("AnyRes packs each tile's features into a grid of "
                             f"{side}x{side}; vision_feature_select_strategy='default' drops a real patch of this "
                             f"{self.vision_config.model_type} tower (it has no CLS token). Use 'full'.")
        if self.vision_feature_select_strategy == "full" and has_cls_token(self.vision_config):
            raise ValueError("AnyRes packs each tile's features into a grid of "
                             f"{side}x{side}; vision_feature_select_strategy='full' keeps the CLS token, which has "
                             "no place in it. Use 'default'.")

    @property
    def max_tiles(self) -> int:
        """AnyRes: tiles of the largest grid plus the overview (1 for fixed-resolution models)."""
        if self.image_aspect_ratio != "anyres":
            return 1
        tile = self.vision_config.image_size
        return 1 + max((h // tile) * (w // tile) for h, w in self.image_grid_pinpoints)

    def to_json_string(self, use_diff: bool = True) -> str:
        """As transformers, plus the LM's RoPE fields as 4.57 reads them (see `add_legacy_rope_fields`).

        Only in what is written (config.json): `to_dict` stays the LM config's own dict, so a dict round trip, or
        the text config loaded alone from the folder, gives back the same config."""
        output = json.loads(super().to_json_string(use_diff=use_diff))
        if isinstance(output.get("text_config"), dict):
            add_legacy_rope_fields(output["text_config"])
        return json.dumps(output, indent=2, sort_keys=True) + "\n"

    @property
    def num_additional_image_tokens(self) -> int:
        """Tokens the tower prepends to the patches (1 for CLIP's CLS, 0 for SigLIP)."""
        return 1 if has_cls_token(self.vision_config) else 0

    @property
    def num_image_tokens(self) -> int:
        """Visual tokens per image, (image_size / patch_size)^2 (+CLS for `full`); AnyRes: per tile (the overview's
        share; an image's count depends on its size, see `LlavaProcessor.num_image_tokens`)."""
        side = self.vision_config.image_size // self.vision_config.patch_size
        tokens = side * side + self.num_additional_image_tokens
        if self.vision_feature_select_strategy == "default":
            tokens -= 1
        return tokens


__all__ = [
    "IMAGE_ASPECT_RATIOS", "LlavaConfig", "PATCH_MERGE_TYPES", "PROJECTOR_TYPES", "TRANSFORMERS_5",
    "add_legacy_rope_fields", "default_grid_pinpoints", "has_cls_token", "projector_depth",
]

"""LLaVA in PyTorch: output dataclass, projector, base model, conditional-generation model.

Provenance: mirrors transformers 4.57 `models/llava/modeling_llava.py` (same parameter names, same
forward semantics, so `load_state_dict` of a transformers llava works with `strict=True`) and adds
the original LLaVA recipe's projector types (`linear`, `mlpNx_gelu`, `identity`), a 3-D
`image_hidden_states` and an error on token/feature mismatch that states the counts.

This file is copied next to saved checkpoints for `trust_remote_code` loading: relative imports only.
"""

import copy
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Optional, Union

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
    ModelOutput,
)
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import unpad_image
from transformers.utils import can_return_tuple

from .configuration_llava import TRANSFORMERS_5, LlavaConfig, projector_depth

if TRANSFORMERS_5:  # 5.x's loading machinery, imported unconditionally: a release that moves it fails here, loudly
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers import initialization
    from transformers.core_model_loading import WeightRenaming, apply_renamings, revert_weight_conversion

# transformers 5.25 renamed the KV cache `past_key_values` -> `cache`, as a keyword of every forward and as the
# field of every output (the old name warns, and is to go in 5.40); earlier lines know only `past_key_values`.
# The name the installed line's outputs declare is the one passed to the LM and the one ours declare.
CACHE_NAME = "cache" if "cache" in {field.name for field in fields(BaseModelOutputWithPast)} else "past_key_values"


def _the_cache(past_key_values: Optional[Cache], cache: Optional[Cache], owner: str) -> Optional[Cache]:
    """The KV cache passed under either name (`cache` from transformers 5.25 on, `past_key_values` before); the old
    name warns where the installed line has renamed it, as transformers' own models do."""
    if past_key_values is not None and cache is not None:
        raise ValueError("Both `cache` and `past_key_values` were given: pass the KV cache once, as `cache` "
                         "(transformers >= 5.25) or `past_key_values` (earlier).")
    if past_key_values is not None and CACHE_NAME == "cache":
        warnings.warn(f"`past_key_values` is deprecated for `{owner}.forward` (transformers 5.25 renamed it, and "
                      "5.40 removes it). Use `cache` instead.", FutureWarning, stacklevel=3)
    return cache if cache is not None else past_key_values


def anyres_grid(image_size: tuple[int, int], config: LlavaConfig) -> tuple[int, int]:
    """(rows, columns) of tiles for an image of `image_size` (height, width): the best-fitting pinpoint (the one
    `LlavaNextImageProcessor` resized it to) in tower-sized tiles."""
    height, width = select_best_resolution(image_size, config.image_grid_pinpoints)
    tile = config.vision_config.image_size
    return height // tile, width // tile


def anyres_tiles(
    pixel_values: torch.Tensor, image_sizes, config: LlavaConfig
) -> tuple[torch.Tensor, list[tuple[int, int]], list[int]]:
    """AnyRes inputs -> (each image's own tiles concatenated `(total_tiles, C, H, W)`, the sizes as (height, width)
    tuples, tiles per image). `pixel_values` `(images, max_tiles, C, H, W)` (padded across a batch: tiles past an
    image's own are skipped) or `(total_tiles, C, H, W)`; `image_sizes` `(images, 2)`. Mismatches are errors."""
    if image_sizes is None:
        raise ValueError(
            "This is an AnyRes (LLaVA-NeXT) model: pass `image_sizes` (height, width of each original image) with "
            "`pixel_values`; LlavaProcessor returns both."
        )
    image_sizes = image_sizes.tolist() if hasattr(image_sizes, "tolist") else image_sizes
    sizes = [(int(height), int(width)) for height, width in image_sizes]
    tiles_per_image = [math.prod(anyres_grid(size, config)) + 1 for size in sizes]  # the overview + the grid
    if pixel_values.dim() == 5:
        if len(sizes) != pixel_values.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} image(s) in pixel_values {tuple(pixel_values.shape)} but "
                             f"{len(sizes)} in image_sizes: pass one (height, width) per image.")
        if pixel_values.shape[1] < max(tiles_per_image):
            raise ValueError(f"pixel_values {tuple(pixel_values.shape)} has {pixel_values.shape[1]} tile(s) per "
                             f"image, but image_sizes ask for {tiles_per_image} (overview + grid): process the "
                             "images with this model's processor (its image_grid_pinpoints).")
        tiles = torch.cat([pixels[:count] for pixels, count in zip(pixel_values, tiles_per_image)])
    elif pixel_values.dim() == 4 and pixel_values.shape[0] == sum(tiles_per_image):
        tiles = pixel_values
    else:
        raise ValueError(f"pixel_values {tuple(pixel_values.shape)}: an AnyRes model takes (images, tiles, C, H, W), "
                         f"or (tiles, C, H, W) with the {sum(tiles_per_image)} tiles image_sizes ask for "
                         f"({tiles_per_image}).")
    return tiles, sizes, tiles_per_image


def pack_anyres(
    tiles: torch.Tensor, image_size: tuple[int, int], config: LlavaConfig, image_newline: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """One image's tile features `(1 + rows * cols, side * side, D)`, the overview first -> its visual tokens.

    `spatial_unpad` (LLaVA-1.6): the tiles' features become one map of the grid, rows * side high and cols * side
    wide; the padding the resize to the pinpoint added is cut away (`unpad_image`, the image's aspect ratio);
    `image_newline` `(D,)` closes every row of the map; the overview's tokens go first. `spatial`: the whole map row
    by row, no newline. `flat`: the tiles one after the other. An image that is a single tile gets its overview and
    (`spatial_unpad`) one newline. (The ONNX Runtime model packs with this function too.)
    """
    merge = config.patch_merge_type
    if merge == "flat" or tiles.shape[0] == 1:
        packed = tiles.flatten(0, 1)  # (tiles * side * side, D)
        if merge == "spatial_unpad":
            packed = torch.cat([packed, image_newline[None].to(packed)])
        return packed
    overview, grid = tiles[0], tiles[1:]  # (side * side, D), (rows * cols, side * side, D)
    rows, cols = anyres_grid(image_size, config)
    side = config.vision_config.image_size // config.vision_config.patch_size
    feature_map = (
        grid.view(rows, cols, side, side, -1)  # (rows, cols, side, side, D)
        .permute(4, 0, 2, 1, 3)  # (D, rows, side, cols, side)
        .flatten(1, 2)  # (D, rows * side, cols * side)
        .flatten(2, 3)
    )
    if merge == "spatial_unpad":
        feature_map = unpad_image(feature_map, image_size)  # (D, height, width): the image's aspect ratio
        newline = image_newline[:, None, None].expand(-1, feature_map.shape[1], 1).to(feature_map)
        feature_map = torch.cat([feature_map, newline], dim=-1)  # (D, height, width + 1)
    return torch.cat([overview, feature_map.flatten(1, 2).transpose(0, 1)])  # (side^2 + height * (width + 1), D)



class _MultimodalOutput:
    """`to_tuple` with the image encoder's output as a nested tuple, as transformers 5's multimodal outputs have it."""

    def to_tuple(self) -> tuple:
        return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in super().to_tuple())


@dataclass
class LlavaCausalLMOutputWithPast(_MultimodalOutput, CausalLMOutputWithPast):
    """Output of [`LlavaForConditionalGeneration`].

    loss: `(1,)` language-modeling loss where `labels != -100`.
    logits: `(batch, seq_len, vocab)`.
    past_key_values (`cache` from transformers 5.25 on): the KV cache.
    image_hidden_states: `(num_images, num_image_tokens, text_hidden_size)`, projected visual tokens; AnyRes: the
        images' packed tokens one after the other, `(total_image_tokens, text_hidden_size)`, as llava_next has them.
    image_outputs (transformers 5.x; None on 4.57): the image encoder's output as 5.x's `get_image_features` gives
        it (`pooler_output` = `image_hidden_states`, plus the tower's states), where 5.x's multimodal outputs have it.
    """

    image_hidden_states: Optional[torch.FloatTensor] = None
    image_outputs: Optional[BaseModelOutputWithPooling] = None


@dataclass
class LlavaModelOutputWithPast(_MultimodalOutput, BaseModelOutputWithPast):
    """Output of [`LlavaModel`]: the LM's last hidden state (and KV cache, as the LM names it) plus the projected
    visual tokens (`image_hidden_states`; on transformers 5.x `image_outputs` too, as `LlavaCausalLMOutputWithPast`)."""

    image_hidden_states: Optional[torch.FloatTensor] = None
    image_outputs: Optional[BaseModelOutputWithPooling] = None


class LlavaMultiModalProjector(nn.Module):
    """Vision features -> LM embeddings.

    `linear`: linear_1. `mlpNx_gelu`: linear_1, act, linear_2, ..., act, linear_N (`mlp2x_gelu` has the
    exact layout of transformers' llava projector). `identity`: no parameters.
    """

    def __init__(self, config: LlavaConfig):
        super().__init__()
        num_feature_layers = 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
        in_dim = config.vision_config.hidden_size * num_feature_layers
        out_dim = config.text_config.hidden_size
        self.depth = projector_depth(config.projector_type)
        bias = config.multimodal_projector_bias
        for i in range(1, self.depth + 1):
            setattr(self, f"linear_{i}", nn.Linear(in_dim if i == 1 else out_dim, out_dim, bias=bias))
        if self.depth > 1:
            self.act = ACT2FN[config.projector_hidden_act]

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        # (num_images, num_tokens, vision_hidden * num_layers) -> (num_images, num_tokens, text_hidden)
        hidden_states = image_features
        for i in range(1, self.depth + 1):
            if i > 1:
                hidden_states = self.act(hidden_states)
            hidden_states = getattr(self, f"linear_{i}")(hidden_states)
        return hidden_states


def skip_vision_in_quantization(quantization_config, modules: Sequence[str]):
    """`quantization_config` with `llm_int8_skip_modules=modules` when it is a bitsandbytes config that names none
    (a copy; the caller's object is left alone): the language model is quantised, the vision tower, the projector
    and the LM head keep the model's dtype. A config that names its own skip list is taken as it is."""
    as_dict = quantization_config if isinstance(quantization_config, dict) else None
    method = as_dict.get("quant_method") if as_dict is not None else getattr(quantization_config, "quant_method", None)
    if str(getattr(method, "value", method)) != "bitsandbytes":
        return quantization_config
    if as_dict is not None:
        return as_dict if as_dict.get("llm_int8_skip_modules") is not None else \
            {**as_dict, "llm_int8_skip_modules": list(modules)}
    if quantization_config.llm_int8_skip_modules is not None:
        return quantization_config
    quantization_config = copy.deepcopy(quantization_config)
    quantization_config.llm_int8_skip_modules = list(modules)
    return quantization_config


class LlavaPreTrainedModel(PreTrainedModel):
    config_class = LlavaConfig
    config: LlavaConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = CACHE_NAME
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # `device_map="auto"`: nothing of ours is kept whole; the towers' and LMs' own lists (their decoder / encoder
    # layers) are gathered from their models.
    _no_split_modules: list = []
    # What a bitsandbytes `quantization_config` leaves in the model's dtype when it names no `llm_int8_skip_modules`
    # (the original LLaVA quantises the LM only, transformers keeps the LM head): full module paths, which both
    # lines match (4.57 by substring `name + "."`, 5.x as an anchored regex or a suffix).
    _quantization_skip_modules: tuple = ()

    def _init_weights(self, module):
        """As transformers; AnyRes's `image_newline` drawn as transformers' llava_next draws it."""
        super()._init_weights(module)
        if isinstance(module, LlavaModel) and hasattr(module, "image_newline"):
            std = 1 / math.sqrt(self.config.text_config.hidden_size)
            if TRANSFORMERS_5:  # 5.x's initializers skip weights already loaded
                initialization.normal_(module.image_newline, mean=0.0, std=std)
            else:
                module.image_newline.data.normal_(mean=0.0, std=std)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As transformers, reading the saved (llava) key names through `key_mapping` on both lines.

        transformers 4.57 applies a class's `_checkpoint_conversion_mapping` by itself; 5.x only
        through `key_mapping` (it keeps the renames and reverses them on save, see `save_pretrained`).
        """
        if cls._checkpoint_conversion_mapping:
            kwargs.setdefault("key_mapping", cls._checkpoint_conversion_mapping)
        quantization = kwargs.get("quantization_config")
        if cls._quantization_skip_modules and quantization is not None:
            kwargs["quantization_config"] = skip_vision_in_quantization(quantization, cls._quantization_skip_modules)
            if "dtype" not in kwargs and "torch_dtype" not in kwargs:
                # 4.57's bitsandbytes loader puts what it does not quantise in float16 unless a dtype is given;
                # 5.x keeps the checkpoint's dtype. "auto" (the checkpoint's) on both lines.
                kwargs["dtype"] = "auto"
        return super().from_pretrained(*args, **kwargs)

    def _keep_saved_key_names(self) -> None:
        """transformers >= 5 saves by reversing the renames a model was loaded with; give a model built
        from a config the same renames (ours, and the towers' own), so every folder has llava's names.
        """
        if not TRANSFORMERS_5:  # 4.57's save_pretrained reverses `_checkpoint_conversion_mapping` itself
            return
        if getattr(self, "_weight_conversions", None) is None:
            self._weight_conversions = get_model_conversion_mapping(
                self, key_mapping=self._checkpoint_conversion_mapping, add_legacy=False
            )

    def checkpoint_key_renamer(self) -> Callable[[str], str]:
        """On-disk key -> parameter name, as `from_pretrained` renames it on this transformers line.

        transformers >= 5: our `_checkpoint_conversion_mapping` plus the towers' own renames (5.x's CLIP
        has no `vision_model.` level in memory). 4.57: the mapping alone, first match wins, as 4.57 does.
        """
        mapping = getattr(self, "_checkpoint_conversion_mapping", None) or {}
        if not TRANSFORMERS_5:
            def rename(key: str) -> str:
                for pattern, replacement in mapping.items():
                    key, hits = re.subn(pattern, replacement, key)
                    if hits:
                        break
                return key

            return rename
        renamings = [c for c in get_model_conversion_mapping(self, key_mapping=mapping or None)
                     if isinstance(c, WeightRenaming)]
        return lambda key: apply_renamings(key, renamings)

    def saved_key_names(self) -> dict[str, str]:
        """Parameter / buffer name -> the key `save_pretrained` writes it under (transformers 4.57's llava
        layout on both lines: `language_model.model.*`, `vision_tower.vision_model.*`, ...)."""
        names = list(self.state_dict())
        if not TRANSFORMERS_5:  # 4.57 reverses `_checkpoint_conversion_mapping` on save, first match wins
            reverse = [(new.lstrip("^"), old.lstrip("^")) for old, new in self._checkpoint_conversion_mapping.items()]

            def saved(name: str) -> str:
                for new, old in reverse:
                    if name.startswith(new):
                        return old + name[len(new):]
                return name

            return {name: saved(name) for name in names}
        self._keep_saved_key_names()
        # The same reversal `save_pretrained` applies to its state dict, key by key (renames only, no tensor math).
        return {name: next(iter(revert_weight_conversion(self, {name: torch.empty(0)}))) for name in names}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict` that also takes the names `save_pretrained` writes.

        `save_pretrained` writes llava weights under the legacy llava names (`language_model.model.*`,
        `vision_tower.vision_model.*`, ...: the load renames reversed) so that older readers load them.
        `Trainer` restores checkpoints with `load_state_dict(strict=False)`, which would silently skip every
        such key; renaming them as `from_pretrained` does makes resume (and any direct load) restore every weight.
        """
        rename = self.checkpoint_key_renamer()
        state_dict = {rename(key): value for key, value in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class LlavaModel(LlavaPreTrainedModel):
    """Vision tower + projector + LM backbone (no LM head)."""

    _checkpoint_conversion_mapping = {"language_model.model": "language_model"}
    _quantization_skip_modules = ("vision_tower", "multi_modal_projector")

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        if config.image_aspect_ratio == "anyres" and config.patch_merge_type == "spatial_unpad":
            # AnyRes: the learned vector closing every row of an image's feature map (LLaVA-1.6's `image_newline`)
            hidden = config.text_config.hidden_size
            self.image_newline = nn.Parameter(torch.randn(hidden, dtype=self.dtype) / math.sqrt(hidden))
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def set_decoder(self, decoder):
        self.language_model = decoder

    def get_decoder(self):
        return self.language_model

    def _image_outputs(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: Optional[Union[int, list[int]]] = None,
        vision_feature_select_strategy: Optional[str] = None,
        output_hidden_states: Optional[bool] = None,
        image_sizes: Optional[torch.Tensor] = None,
        **tower_kwargs,
    ) -> BaseModelOutputWithPooling:
        """The visual tokens as `pooler_output`, beside the tower's `last_hidden_state`, `attentions` and (when asked
        for, by argument or config) `hidden_states`.

        Fixed resolution: `pixel_values` `(num_images, C, H, W)` -> `(num_images, num_image_tokens, text_hidden)`.
        AnyRes: `pixel_values` `(num_images, max_tiles, C, H, W)` (padded tiles past an image's own are skipped) or
        its tiles concatenated `(total_tiles, C, H, W)`, with `image_sizes` `(num_images, 2)` (height, width) ->
        a tuple of `(packed_tokens_i, text_hidden)`, one per image (see `pack_anyres`).
        """
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = (
            self.config.vision_feature_select_strategy
            if vision_feature_select_strategy is None
            else vision_feature_select_strategy
        )
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy={strategy!r}: expected 'default' or 'full'.")
        anyres = self.config.image_aspect_ratio == "anyres"
        if anyres:
            pixel_values, image_sizes, tiles_per_image = anyres_tiles(pixel_values, image_sizes, self.config)
        tower, features = self._encode(pixel_values, layer, strategy, **tower_kwargs)
        if anyres:  # (total_tiles, patches, text_hidden) -> one packed (tokens_i, text_hidden) per image
            features = tuple(
                pack_anyres(tiles, size, self.config, getattr(self, "image_newline", None))
                for tiles, size in zip(torch.split(features, tiles_per_image), image_sizes)
            )
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states or self.config.vision_config.output_hidden_states
        return BaseModelOutputWithPooling(
            last_hidden_state=tower.last_hidden_state,
            pooler_output=features,
            hidden_states=tower.hidden_states if output_hidden_states else None,
            attentions=tower.attentions,
        )

    def _encode(self, pixel_values: torch.Tensor, layer, strategy: str, **tower_kwargs):
        """`(N, C, H, W)` tower-sized images or tiles -> (the tower's output, their projected features
        `(N, tokens, text_hidden)`)."""
        tower_kwargs = {k: v for k, v in tower_kwargs.items() if v is not None}
        # The whole tower runs, also the layers after the one LLaVA reads (-2: one of CLIP-L's 24): a model is
        # shared by threads and compiled graphs, so nothing about it changes during a call.
        tower = self.vision_tower(
            pixel_values.to(self.vision_tower.dtype), output_hidden_states=True, return_dict=True, **tower_kwargs
        )
        hidden_states = tower.hidden_states  # the embeddings, then each layer's output
        layers = [layer] if isinstance(layer, int) else layer
        if not all(-len(hidden_states) <= i < len(hidden_states) for i in layers):
            raise ValueError(
                f"vision_feature_layer={layer!r}, but the vision tower has {len(hidden_states) - 1} layers: hidden "
                f"states {-len(hidden_states)}..{len(hidden_states) - 1} exist (0 is the embeddings)."
            )
        # each (num_images or total_tiles, 1 + num_patches, vision_hidden) for CLIP; CLS first
        selected = [hidden_states[i] for i in layers]
        if strategy == "default":
            selected = [hs[:, 1:] for hs in selected]
        return tower, self.multi_modal_projector(selected[0] if len(selected) == 1 else torch.cat(selected, dim=-1))

    def tile_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(N, C, H, W)` tower-sized images, or AnyRes tiles, -> projected `(N, tokens_per_tile, text_hidden)`, with
        the config's layer and strategy and no packing (what the ONNX vision graph computes)."""
        config = self.config
        return self._encode(pixel_values, config.vision_feature_layer, config.vision_feature_select_strategy)[1]

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: Optional[Union[int, list[int]]] = None,
        vision_feature_select_strategy: Optional[str] = None,
        image_sizes: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Union[torch.Tensor, tuple, BaseModelOutputWithPooling]:
        """`(num_images, channels, height, width)` -> visual tokens `(num_images, num_image_tokens, text_hidden_size)`;
        AnyRes (with `image_sizes`): a tuple of packed `(tokens_i, text_hidden_size)`, one per image, as llava_next.

        transformers 4.57: that tensor (tuple), as 4.57's llava (llava_next). 5.x: as 5.x's, a
        `BaseModelOutputWithPooling` whose `pooler_output` is that (`last_hidden_state`, `hidden_states`,
        `attentions`: the tower's), a tuple with `return_dict=False`.
        """
        return_dict = kwargs.pop("return_dict", None)
        outputs = self._image_outputs(pixel_values, vision_feature_layer, vision_feature_select_strategy,
                                      image_sizes=image_sizes, **kwargs)
        if not TRANSFORMERS_5:
            return outputs.pooler_output
        return outputs if (self.config.return_dict if return_dict is None else return_dict) else outputs.to_tuple()

    def _splice_image_features(
        self,
        input_ids: Optional[torch.LongTensor],
        inputs_embeds: torch.FloatTensor,
        image_features: Union[torch.Tensor, tuple],
    ) -> torch.FloatTensor:
        """Write the visual tokens where `input_ids == image_token_id` (the LLaVA splice); `image_features`
        `(num_images, tokens_per_image, H)`, or AnyRes's tuple of `(tokens_i, H)`."""
        if input_ids is not None:
            mask = input_ids == self.config.image_token_id  # (B, T)
        else:
            image_embed = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == image_embed).all(-1)
        if isinstance(image_features, (tuple, list)):  # AnyRes: each image's own count
            counts = [features.shape[0] for features in image_features]
            image_features = torch.cat(image_features)
            expected = f"{len(counts)} image(s) packed to {counts} tokens (AnyRes: by each image's size)"
        else:
            num_images, tokens_per_image = image_features.shape[:2]
            counts = [tokens_per_image] * num_images
            expected = f"{num_images} image(s) x {tokens_per_image} tokens per image"
        if not torch.compiler.is_compiling() and int(mask.sum()) != sum(counts):
            raise ValueError(
                f"The prompt has {int(mask.sum())} image tokens (id {self.config.image_token_id}), but {expected} = "
                f"{sum(counts)} were expected. Each image needs exactly one '<image>' in the text, expanded to its "
                "count (LlavaProcessor does this); check that the number of images matches the number of '<image>' "
                "placeholders."
            )
        mask = mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)
        return inputs_embeds.masked_scatter(mask, image_features.to(inputs_embeds.device, inputs_embeds.dtype))

    @staticmethod
    def _prompt_step(input_ids: torch.LongTensor, past_key_values: Optional[Cache]) -> bool:
        """A prompt (not a one-token decoding step): where image tokens without images must be caught.

        Decoding steps are skipped so that generation does not pay a device sync per token.
        """
        return input_ids.shape[-1] > 1 or past_key_values is None or past_key_values.get_seq_length() == 0

    def _check_no_image_tokens(self, input_ids: torch.LongTensor) -> None:
        if torch.compiler.is_compiling():
            return
        found = int((input_ids == self.config.image_token_id).sum())
        if found:
            raise ValueError(
                f"The prompt has {found} image tokens (id {self.config.image_token_id}) but no pixel_values were "
                "given: pass the image(s) (LlavaProcessor(images=..., text=...)) or remove '<image>' from the text."
            )

    @can_return_tuple
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        pixel_values: Optional[torch.FloatTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Cache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        vision_feature_layer: Optional[Union[int, list[int]]] = None,
        vision_feature_select_strategy: Optional[str] = None,
        image_sizes: Optional[torch.Tensor] = None,
        cache: Optional[Cache] = None,
        **kwargs,
    ) -> LlavaModelOutputWithPast:
        past_key_values = _the_cache(past_key_values, cache, type(self).__name__)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, T, H)
        image_outputs = image_features = None
        if pixel_values is None and input_ids is not None and self._prompt_step(input_ids, past_key_values):
            self._check_no_image_tokens(input_ids)
        if pixel_values is not None:
            # transformers 5.x returns the image encoder's states too (`image_outputs`), when asked as for the LM's
            asked = {k: kwargs.get(k) for k in ("output_hidden_states", "output_attentions")} if TRANSFORMERS_5 else {}
            image_outputs = self._image_outputs(
                pixel_values, vision_feature_layer, vision_feature_select_strategy, image_sizes=image_sizes, **asked
            )
            inputs_embeds = self._splice_image_features(input_ids, inputs_embeds, image_outputs.pooler_output)
            image_features = image_outputs.pooler_output
            if isinstance(image_features, tuple):  # AnyRes: (total_image_tokens, H), as llava_next
                image_features = torch.cat(image_features)
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **{CACHE_NAME: past_key_values},
            **kwargs,
        )
        return LlavaModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            image_outputs=image_outputs if TRANSFORMERS_5 else None,
        )


class LlavaForConditionalGeneration(LlavaPreTrainedModel, GenerationMixin):
    """LLaVA: visual tokens from a (frozen) vision tower, projected and spliced into a causal LM."""

    _checkpoint_conversion_mapping = {
        "^language_model.model": "model.language_model",
        "^vision_tower": "model.vision_tower",
        "^multi_modal_projector": "model.multi_modal_projector",
        "^language_model.lm_head": "lm_head",
        "^image_newline": "model.image_newline",
    }
    # A dict on transformers 5 (tied key -> its source); 4.57 reads only the keys.
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # Tensor parallelism (transformers 5, `tp_plan="auto"`): the head sharded as transformers' llava shards it, since
    # the LM's plan shards `embed_tokens`, and a tied pair must be sharded both or neither.
    _tp_plan = {"lm_head": "colwise_gather_output"} if TRANSFORMERS_5 else None
    _quantization_skip_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        self.model = LlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def set_decoder(self, decoder):
        self.model.set_decoder(decoder)

    def get_decoder(self):
        return self.model.get_decoder()

    @property
    def base_model(self) -> "LlavaModel":
        """The LLaVA backbone, as transformers 5's llava has it (TRL's fused loss calls it on 5.x). The
        prefix stays "" as in 4.57's llava, whose loader relies on it."""
        return self.model

    @property
    def language_model(self):
        return self.model.language_model

    @property
    def vision_tower(self):
        return self.model.vision_tower

    @property
    def multi_modal_projector(self):
        return self.model.multi_modal_projector

    def get_image_features(
        self, pixel_values: torch.FloatTensor, **kwargs
    ) -> Union[torch.Tensor, BaseModelOutputWithPooling, tuple]:
        """`LlavaModel.get_image_features`: the visual tokens, a tensor on transformers 4.57; on 5.x the encoder's
        output with them as `pooler_output`."""
        return self.model.get_image_features(pixel_values, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        pixel_values: Optional[torch.FloatTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Cache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        vision_feature_layer: Optional[Union[int, list[int]]] = None,
        vision_feature_select_strategy: Optional[str] = None,
        labels: Optional[torch.LongTensor] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        image_sizes: Optional[torch.Tensor] = None,
        cache: Optional[Cache] = None,
        **kwargs,
    ) -> LlavaCausalLMOutputWithPast:
        """Args as transformers' llava. `labels` `(B, T)`: -100 is ignored; the shift happens inside. The KV cache
        comes as `cache` (transformers >= 5.25's name) or `past_key_values` (earlier lines' name)."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_the_cache(past_key_values, cache, type(self).__name__),
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            image_sizes=image_sizes,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        # Only the logits that are needed (the last one during generation).
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return LlavaCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            image_outputs=outputs.image_outputs,
        )

    def prepare_inputs_for_generation(self, *args, **kwargs):
        """Images only on the prefill step: later steps feed one new token and reuse the KV cache.

        transformers 5 drops `pixel_values` after the prefill itself and passes no `cache_position`;
        4.57 forwards every keyword at every step, so its `cache_position` says when to drop them.
        """
        model_inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        cache_position = kwargs.get("cache_position")
        if cache_position is not None and cache_position[0] != 0:
            model_inputs.pop("pixel_values", None)
        return model_inputs

    def add_auto_map_aliases(self) -> None:
        """`AutoModelForVision2Seq` in the config's `auto_map` beside the registered name (one class, 2 Auto names)."""
        if self._auto_class is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map["AutoModelForVision2Seq"] = f"modeling_llava.{type(self).__name__}"
            self.config.auto_map = auto_map

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers, plus the `auto_map` aliases (`add_auto_map_aliases`)."""
        self.add_auto_map_aliases()
        self._keep_saved_key_names()
        return super().save_pretrained(save_directory, *args, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload with an hf-llava model card (`hf_llava.push_to_hub`); pass `processor=` to add it."""
        try:
            from hf_llava.hub import push_to_hub
        except ImportError:  # a trust_remote_code copy where hf-llava is not installed
            return super().push_to_hub(repo_id, **kwargs)
        return push_to_hub(repo_id, model=self, **kwargs)


__all__ = [
    "anyres_grid",
    "skip_vision_in_quantization",
    "anyres_tiles",
    "pack_anyres",
    "LlavaCausalLMOutputWithPast",
    "LlavaForConditionalGeneration",
    "LlavaModel",
    "LlavaModelOutputWithPast",
    "LlavaMultiModalProjector",
    "LlavaPreTrainedModel",
]

"""`LlavaProcessor`: image processor + tokenizer + LLaVA chat template.

Provenance: mirrors transformers 4.57 `models/llava/processing_llava.py` (same arguments, same
`input_ids` for the same tokenizer and template) and adds: image loading with named errors, the LLaVA
chat templates, and truncation that never cuts through image tokens.

This file is copied next to saved checkpoints for `trust_remote_code` loading: relative imports only.
"""

import json
import os
from typing import Optional, Union

import transformers
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import select_best_resolution
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack

from .chat_templates import get_chat_template
from .image_loading import load_images



def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def strip_json_fields(paths, fields: tuple[str, ...]) -> None:
    """Remove `fields` from each existing JSON file in `paths`, at the top level and in the parts nested one level
    down (transformers 5's `processor_config.json` holds each part's config); rewritten only if it had one."""
    for path in paths:
        if not os.path.isfile(path):
            continue
        data = _read_json(path)
        if not isinstance(data, dict):
            continue
        holders = [data] + [value for value in data.values() if isinstance(value, dict)]
        if any(field in holder for holder in holders for field in fields):
            for holder in holders:
                for field in fields:
                    holder.pop(field, None)
            _write_json(path, data)


def write_portable_processor_files(save_directory) -> None:
    """Rewrite the processor files of `save_directory` in the layout transformers 4.57 writes, which 5.x reads too.

    transformers >= 5 (feature-detected by what it wrote) nests the image processor in `processor_config.json`
    (4.57: `preprocessor_config.json`), names the tokenizer class `TokenizersBackend` (4.57:
    `PreTrainedTokenizerFast`, which 5.x maps to the same class), writes `extra_special_tokens` as a list
    (4.57: `additional_special_tokens`; its `extra_special_tokens` is a dict) and saves load options
    (`backend`, `is_local`, `local_files_only`). A folder written by either line then loads in both.
    """
    processor_path = os.path.join(save_directory, "processor_config.json")
    if os.path.isfile(processor_path):
        data = _read_json(processor_path)
        if isinstance(data.get("image_processor"), dict):
            _write_json(os.path.join(save_directory, "preprocessor_config.json"), data.pop("image_processor"))
            _write_json(processor_path, data)
    tokenizer_path = os.path.join(save_directory, "tokenizer_config.json")
    if os.path.isfile(tokenizer_path):
        data = _read_json(tokenizer_path)
        changed = dict(data)
        if changed.get("tokenizer_class") == "TokenizersBackend":
            changed["tokenizer_class"] = "PreTrainedTokenizerFast"
        if isinstance(changed.get("extra_special_tokens"), list):
            extra = changed.pop("extra_special_tokens")
            if extra:
                changed["additional_special_tokens"] = extra
        if changed.get("backend") == "tokenizers":
            changed.pop("backend")
        for load_option in ("is_local", "local_files_only"):
            changed.pop(load_option, None)
        if changed != data:
            _write_json(tokenizer_path, changed)


# transformers >= 5 picks image processors by backend ("pil" / "torchvision", replacing `use_fast`) and finds
# a processor's parts by modality; 4.57 needs their class names. Detected by public API (the PIL backend's class
# that 5.0 added), as `_compat.HAS_IMAGE_BACKENDS` does: this file is copied next to checkpoints and loads alone.
_HAS_BACKENDS = hasattr(transformers, "LlavaImageProcessorPil")


class LlavaProcessorKwargs(ProcessingKwargs, total=False):
    _defaults = {"text_kwargs": {"padding": False}, "images_kwargs": {}}


def add_llava_tokens(tokenizer, image_token: str = "<image>") -> int:
    """Adds `image_token` (and a `<pad>` token when the tokenizer has none); returns the image token id."""
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer.convert_tokens_to_ids(image_token)


class LlavaProcessor(ProcessorMixin):
    r"""Image processor + tokenizer for [`LlavaForConditionalGeneration`].

    Each `<image>` in the text expands to exactly the number of visual tokens the model produces:
    `image_seq_length`, the model config's count (stored here as PaliGemma's processor stores it).
    Processors that do not store it (transformers' llava layout) derive it as transformers does:
    `(height // patch_size) * (width // patch_size) + num_additional_image_tokens`, minus 1 for the
    `default` strategy (which drops CLS).

    Args:
        image_processor: a transformers image processor (`LlavaImageProcessor` with `do_pad=True` is
            LLaVA-1.5's pad-to-square with the mean colour; `CLIPImageProcessor` is LLaVA v1's crop).
        tokenizer: the LM's tokenizer, with `image_token` in its vocabulary.
        patch_size (`int`): the vision tower's patch size.
        vision_feature_select_strategy (`str`): as in the model config (`default` or `full`).
        chat_template (`str`): Jinja source or a name from `CHAT_TEMPLATES` (default `vicuna_v1`).
        image_token (`str`, defaults to `"<image>"`).
        num_additional_image_tokens (`int`, defaults to 0): tokens the tower adds to the patches
            (1 for CLIP's CLS, 0 for SigLIP).
        image_seq_length (`int`, *optional*): visual tokens per image (`LlavaConfig.image_seq_length`).
        patch_merge_type (`str`, defaults to `"spatial_unpad"`): AnyRes packing, as the model config's.

    AnyRes (LLaVA-NeXT): with an image processor that has `image_grid_pinpoints` (`LlavaNextImageProcessor`),
    `pixel_values` are `(images, tiles, C, H, W)` with `image_sizes`, and each `<image>` expands to the count the
    model packs for that image's size (`anyres_num_image_tokens`).
    """

    attributes = ["image_processor", "tokenizer"]
    if not _HAS_BACKENDS:
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size: Optional[int] = None,
        vision_feature_select_strategy: Optional[str] = None,
        chat_template: Optional[str] = None,
        image_token: str = "<image>",
        num_additional_image_tokens: int = 0,
        image_seq_length: Optional[int] = None,
        patch_merge_type: str = "spatial_unpad",
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("LlavaProcessor needs a tokenizer.")
        chat_template = get_chat_template("vicuna_v1" if chat_template is None else chat_template)
        self.patch_size = patch_size
        self.num_additional_image_tokens = num_additional_image_tokens
        self.image_seq_length = image_seq_length
        self.patch_merge_type = patch_merge_type
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        if self.image_token not in tokenizer.get_vocab():
            raise ValueError(
                f"The tokenizer has no {self.image_token!r} token; add it with "
                "`hf_llava.processing.add_llava_tokens(tokenizer)` (and resize the model's embeddings)."
            )
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def num_image_tokens(self, height: int, width: int) -> int:
        """Visual tokens for one processed image of `height` x `width` pixels."""
        if self.image_seq_length is not None:
            return self.image_seq_length
        if self.patch_size is None:
            raise ValueError("LlavaProcessor needs image_seq_length (the model config's) or the tower's patch_size.")
        tokens = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        if self.vision_feature_select_strategy == "default":
            tokens -= 1
        return tokens

    @property
    def anyres(self) -> bool:
        """Whether images are cut into AnyRes tiles (the image processor has `image_grid_pinpoints`)."""
        return getattr(self.image_processor, "image_grid_pinpoints", None) is not None

    def anyres_num_image_tokens(self, image_size: tuple[int, int], tile_size: tuple[int, int]) -> int:
        """Visual tokens the model packs for an original image of `image_size` (height, width) cut into tiles of
        `tile_size` pixels (the tower's input): the overview's, then per `patch_merge_type` the grid's (see
        `modeling_llava.pack_anyres`; the unpadding arithmetic is transformers' `unpad_image`)."""
        if self.patch_size is None:
            raise ValueError("LlavaProcessor needs the tower's patch_size to count AnyRes tokens.")
        height, width = (int(x) for x in image_size)
        best_height, best_width = select_best_resolution((height, width), self.image_processor.image_grid_pinpoints)
        rows, cols = best_height // tile_size[0], best_width // tile_size[1]
        side_h, side_w = tile_size[0] // self.patch_size, tile_size[1] // self.patch_size
        per_tile = side_h * side_w + self.num_additional_image_tokens
        per_tile -= self.vision_feature_select_strategy == "default"  # drops CLS
        if self.patch_merge_type == "flat":
            return per_tile * (1 + rows * cols)
        map_h, map_w = rows * side_h, cols * side_w  # the grid's feature map
        if self.patch_merge_type == "spatial":
            return per_tile + map_h * map_w
        if width / height > map_w / map_h:  # wider than the map: padding rows are cut, top and bottom alike
            map_h -= 2 * ((map_h - int(round(height * (map_w / width), 7))) // 2)
        else:  # padding columns are cut
            map_w -= 2 * ((map_w - int(round(width * (map_h / height), 7))) // 2)
        return per_tile + map_h * (map_w + 1)  # + an image_newline closing each row

    def image_token_counts(self, image_inputs) -> list[int]:
        """Each image's visual tokens, from the image processor's output (`pixel_values`, and `image_sizes` for
        AnyRes, where the count follows the original image's size)."""
        pixel_values = image_inputs["pixel_values"]
        if self.anyres:
            return [self.anyres_num_image_tokens(size, pixels.shape[-2:])
                    for pixels, size in zip(pixel_values, image_inputs["image_sizes"])]
        return [self.num_image_tokens(*pixels.shape[-2:]) for pixels in pixel_values]

    def expand_image_tokens(self, text: str, tokens_per_image: list[int]) -> tuple[str, list[int]]:
        """The one expansion: the i-th `image_token` of `text` becomes `tokens_per_image[i]` image tokens.

        Returns the expanded text and, for each placeholder, the number of characters inserted after
        it (what the training collator shifts its answer spans by).
        """
        parts = text.split(self.image_token)
        if len(parts) - 1 != len(tokens_per_image):
            raise ValueError(
                f"{len(parts) - 1} {self.image_token!r} placeholder(s) for {len(tokens_per_image)} count(s).")
        out, added = [parts[0]], []
        for count, part in zip(tokens_per_image, parts[1:]):
            out.append(self.image_token * count + part)
            added.append((count - 1) * len(self.image_token))
        return "".join(out), added

    def __call__(
        self,
        images=None,
        text: Union[str, list[str], None] = None,
        audio=None,
        videos=None,
        **kwargs: Unpack[LlavaProcessorKwargs],
    ) -> BatchFeature:
        """Images and/or text -> `input_ids`, `attention_mask` and `pixel_values` `(num_images, 3, H, W)`.

        `truncation=True` with `max_length` raises when it would cut image tokens;
        `truncation="text_only"` removes text tokens (from the tokenizer's truncation side) and keeps
        every image token.
        """
        if images is None and text is None:
            raise ValueError("LlavaProcessor needs `images`, `text` or both.")
        # `apply_chat_template(..., tokenize=True)` passes its template variables on to this call (4.57)
        kwargs.pop("image_token", None)
        truncation = kwargs.pop("truncation", None)
        max_length = kwargs.pop("max_length", None)
        if truncation and max_length is None and self.tokenizer.model_max_length < 1e8:
            max_length = self.tokenizer.model_max_length  # what the tokenizer would truncate to
        output_kwargs = self._merge_kwargs(LlavaProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs,
                                           **kwargs)
        image_inputs = {}
        if images is not None:
            image_inputs = self.image_processor(load_images(images), **output_kwargs["images_kwargs"])
        # `return_tensors` sits in common_kwargs on 4.57 and in each modality's kwargs on 5.x
        return_tensors = output_kwargs.get("common_kwargs", {}).get("return_tensors")
        return_tensors = return_tensors or output_kwargs["text_kwargs"].get("return_tensors")
        if text is None:
            return BatchFeature(data=dict(image_inputs), tensor_type=return_tensors)
        if isinstance(text, str):
            text = [text]
        elif not (isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text)):
            raise TypeError("`text` must be a string or a list of strings.")

        num_images = len(image_inputs["pixel_values"]) if "pixel_values" in image_inputs else 0
        num_placeholders = sum(t.count(self.image_token) for t in text)
        if num_placeholders != num_images:  # both ways: an unexpanded placeholder is read as a word
            raise ValueError(
                f"The text has {num_placeholders} {self.image_token!r} placeholder(s) but {num_images} image(s) "
                "were given; pass one image per placeholder (apply_chat_template writes one per image part)."
            )
        prompts = list(text)
        if num_images:
            counts = iter(self.image_token_counts(image_inputs))
            prompts = [self.expand_image_tokens(t, [next(counts) for _ in range(t.count(self.image_token))])[0]
                       for t in text]

        text_kwargs = output_kwargs["text_kwargs"]
        text_kwargs.pop("return_tensors", None)
        if truncation and max_length is not None:
            text_inputs = self._tokenize_truncated(prompts, truncation, max_length, text_kwargs)
        else:
            if truncation is not None:
                text_kwargs["truncation"] = truncation
            if max_length is not None:
                text_kwargs["max_length"] = max_length
            text_inputs = self.tokenizer(prompts, **text_kwargs, return_tensors=None)
        self._check_special_mm_tokens(prompts, text_inputs, modalities=["image"])
        return BatchFeature(data={**text_inputs, **image_inputs}, tensor_type=return_tensors)

    def _tokenize_truncated(self, prompts: list[str], truncation, max_length: int, text_kwargs: dict) -> dict:
        """Tokenize, then truncate each sequence to `max_length` without ever cutting an image token."""
        padding = text_kwargs.pop("padding", False)
        encoded = self.tokenizer(prompts, **{**text_kwargs, "padding": False, "truncation": False})
        rows = []
        for i, ids in enumerate(encoded["input_ids"]):
            rows.append([ids[j] for j in self.kept_positions(ids, truncation, max_length, f"Sample {i}")])
        features = {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}
        if padding:
            features = self.tokenizer.pad(features, padding=padding, max_length=max_length)
        return dict(features)

    def kept_positions(self, ids: list[int], truncation, max_length: int, name: str = "The sample") -> list[int]:
        """Positions of `ids` that truncation to `max_length` keeps, never cutting an image token.

        `truncation=True` cuts on the tokenizer's truncation side and raises if that would cut image
        tokens; `"text_only"` drops text tokens from that side and keeps every image token. `name`
        names the sequence in errors. (The training collator applies the same positions to its labels.)
        """
        excess = len(ids) - max_length
        if excess <= 0:
            return list(range(len(ids)))
        left = self.tokenizer.truncation_side == "left"
        n_image = sum(1 for t in ids if t == self.image_token_id)
        if truncation == "text_only":
            if n_image > max_length:
                raise ValueError(
                    f"{name}: its {n_image} image tokens alone exceed max_length={max_length}; "
                    "raise max_length or pass fewer images."
                )
            order = range(len(ids)) if left else range(len(ids) - 1, -1, -1)
            drop = set()
            for j in order:
                if len(drop) == excess:
                    break
                if ids[j] != self.image_token_id:
                    drop.add(j)
            return [j for j in range(len(ids)) if j not in drop]
        kept = range(excess, len(ids)) if left else range(max_length)
        if sum(1 for j in kept if ids[j] == self.image_token_id) != n_image:
            raise ValueError(
                f"{name} has {len(ids)} tokens ({n_image} of them image tokens); truncating it to "
                f"max_length={max_length} would cut through its image tokens. Raise max_length, shorten "
                "the text, or pass truncation='text_only' to drop text tokens only."
            )
        return list(kept)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """As transformers, with this processor's `image_token` passed to the template (LLaVA formats use it)."""
        kwargs.setdefault("image_token", self.image_token)
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """The two parts, by their Auto classes: the PIL/numpy image processor unless another is asked for
        (`backend=` on 5.x, `use_fast=` on 4.57), and the tokenizer without that option.

        The torchvision-backed processors differ slightly in output and need torchvision; naming the choice
        also keeps transformers' notice off every load. The tokenizer must not see it: 4.57's `use_fast=False`
        would pick a slow tokenizer, and 5.x's tokenizers take `backend` as their own (and save it).
        """
        from transformers import AutoImageProcessor, AutoTokenizer

        option, pil = ("backend", "pil") if _HAS_BACKENDS else ("use_fast", False)
        image_kwargs = {option: pil, **kwargs}
        kwargs.pop(option, None)
        return [
            AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, **image_kwargs),
            AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs),
        ]

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Save as transformers does, minus the `processor_class` fields.

        transformers resolves `processor_class` by name, and `"LlavaProcessor"` names its own class;
        without the field, `AutoProcessor` goes through the config's `model_type` (`hf_llava`) to ours.
        """
        if push_to_hub:
            raise ValueError("Use `processor.push_to_hub(repo_id)` or `hf_llava.push_to_hub(...)` to upload.")
        files = super().save_pretrained(save_directory, **kwargs)
        write_portable_processor_files(save_directory)
        names = ("tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
        strip_json_fields([os.path.join(save_directory, name) for name in names], ("processor_class",))
        for attribute in (self.tokenizer, self.image_processor):
            if hasattr(attribute, "_processor_class"):
                attribute._processor_class = None
        return files

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the processor files (`hf_llava.push_to_hub`; pass `model=` too to add the model and its card)."""
        try:
            from hf_llava.hub import push_to_hub
        except ImportError:  # a trust_remote_code copy where hf-llava is not installed
            return super().push_to_hub(repo_id, **kwargs)
        return push_to_hub(repo_id, processor=self, **kwargs)


__all__ = ["LlavaProcessor", "add_llava_tokens"]

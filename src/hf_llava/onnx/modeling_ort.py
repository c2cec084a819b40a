"""`ORTLlavaForConditionalGeneration`: generation with the three exported graphs on ONNX Runtime.

Owns: loading the sessions (provider, dtype variant), the image splice outside the graphs (AnyRes: the
tiles' packing, with PyTorch's own `pack_anyres`), the decoding loop and its KV cache, for both decoders
`export_onnx` writes:
- traced (`optimize="none"`): past in, present out, a new cache each step (numpy on CPU; OrtValues kept on the
  GPU through IOBinding on CUDA);
- GroupQueryAttention (`optimize="gqa"`, onnxruntime-genai's builder): one buffer per layer's keys / values,
  sized for the whole generation and bound as both past and present (IOBinding on CPU as on CUDA), which the op
  writes in place. Its rows are right-aligned at position 0 of the buffer (positions come from the mask): each
  prompt is prefilled alone into its row, without padding; then every step decodes the whole batch.
Both return the last position's logits only while generating (`num_logits_to_keep`).

Why a loop of our own rather than `GenerationMixin`: `GenerationMixin` drives a torch module whose
cache is a `transformers.Cache` of torch tensors (plus `device`, parameters, `cache_position`
bookkeeping). Here the cache is ONNX Runtime's (numpy arrays, or OrtValues on the device), so a
shim would convert it at every step or fake a torch cache. The loop below is ~60 lines and reuses
transformers' `GenerationConfig`, logits processors / warpers (in transformers' order), stopping criteria and
streamer protocol, so the fields in `SUPPORTED_FIELDS` behave as in transformers and greedy output equals
`LlavaForConditionalGeneration.generate` token for token. Any other field set away from its default
(beam search, contrastive search, `num_return_sequences`...) is refused by name, never ignored.
"""

import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase
from transformers.generation.logits_process import (
    ForcedEOSTokenLogitsProcessor,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.stopping_criteria import (
    EosTokenCriteria,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .._compat import complete_generation_config
from .._extras import require
from ..modeling import LlavaConfig
from ..modeling.modeling_llava import anyres_tiles, pack_anyres
from .layout import (
    DTYPES,
    EXPORT_INFO,
    GRAPH_NAMES,
    IMAGE_NEWLINE,
    NUM_LOGITS_TO_KEEP,
    kv_shape,
    onnx_file,
    past_names,
    present_names,
)

ort = require("onnxruntime", "onnx", "ONNX Runtime inference")
logger = logging.getLogger(__package__)  # "hf_llava.onnx"

# GenerationConfig fields the loop implements (through the processors built in `_logits_processors`)...
SUPPORTED_FIELDS = frozenset({
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "eos_token_id", "pad_token_id",
    "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size",
    "bad_words_ids", "sequence_bias", "suppress_tokens", "begin_suppress_tokens", "forced_eos_token_id",
    "return_dict_in_generate", "output_logits", "output_scores", "stop_strings",
})
# ...and those that change nothing here: PyTorch-side cache / compilation settings, assistant-model settings
# (no assistant can be passed), beam-search-only settings (beam search itself is refused), bookkeeping.
NO_EFFECT_FIELDS = frozenset({
    "bos_token_id", "decoder_start_token_id", "use_cache", "cache_implementation", "cache_config",
    "return_legacy_cache", "compile_config", "disable_compile", "prefill_chunk_size", "low_memory",
    "early_stopping", "length_penalty", "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "assistant_confidence_threshold", "assistant_lookbehind", "assistant_early_exit", "target_lookbehind",
    "max_matching_ngram_size", "transformers_version", "_from_model_config",
})

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _numpy(x) -> Optional[np.ndarray]:
    if x is None or isinstance(x, np.ndarray):
        return x
    x = x.detach().cpu()
    if x.is_floating_point() and x.dtype not in (torch.float16, torch.float32):
        x = x.float()  # numpy has no bfloat16; the graphs take fp32 (or fp16, cast later)
    return x.numpy()


def _prompt_positions(mask: np.ndarray) -> np.ndarray:
    """The traced decoder's `position_ids (B, T)` for a left-padded prompt, as transformers computes them."""
    return np.where(mask == 0, 1, mask.cumsum(-1) - 1)


class ORTLlavaForConditionalGeneration:
    """LLaVA on ONNX Runtime: `vision_encoder`, `embed_tokens` and `decoder_model_merged` sessions.

    `generate(input_ids, attention_mask=None, pixel_values=None, **generation_kwargs)` takes what
    `LlavaProcessor(..., return_tensors="pt")` returns (torch or numpy) and returns
    `(batch, prompt_len + new_tokens)` token ids as a torch LongTensor, like transformers.
    """

    def __init__(self, config, sessions: dict, generation_config: Optional[GenerationConfig] = None):
        self.config = config
        self.vision_session = sessions["vision_encoder"]
        self.embed_session = sessions["embed_tokens"]
        self.decoder_session = sessions["decoder_model_merged"]
        self.generation_config = generation_config or GenerationConfig()
        self.num_layers = config.text_config.num_hidden_layers
        self.kv_heads, self.head_dim = kv_shape(config.text_config)
        inputs = {i.name: i.type for i in self.decoder_session.get_inputs()}
        self.float_dtype = _ORT_TYPES[inputs["inputs_embeds"]]
        self.provider = self.decoder_session.get_providers()[0]
        self.use_io_binding = self.provider == "CUDAExecutionProvider"
        # the builder's GroupQueryAttention decoder takes no position_ids; exports older than num_logits_to_keep
        # return every position's logits
        self.gqa = "position_ids" not in inputs
        self.keeps_logits = NUM_LOGITS_TO_KEEP in inputs

    @classmethod
    def from_pretrained(
        cls,
        path: Union[str, Path],
        provider: str = "CPUExecutionProvider",
        dtype: str = "auto",
        session_options: Optional[ort.SessionOptions] = None,
        provider_options: Optional[dict] = None,
    ) -> "ORTLlavaForConditionalGeneration":
        """Load an `export_onnx` folder. `dtype`: `auto` (the most precise variant present: fp32, which every
        export writes), `fp32`, `fp16` or `int8`.

        ONNX Runtime silently falls back to CPU when a provider cannot start (onnxruntime-gpu on a machine
        without CUDA): the provider actually used is `self.provider`, and a warning says so. The graph files
        loaded and the provider are logged (logger `hf_llava.onnx`, INFO).
        """
        path = Path(path)
        if not (path / EXPORT_INFO).is_file():
            raise FileNotFoundError(
                f"{path} has no {EXPORT_INFO}: expected a folder written by `hf-llava export-onnx`."
            )
        # GroupQueryAttention has CUDA kernels for fp16 / bf16 only: an fp32 GQA decoder would fall back to the CPU
        gqa_on_cuda = provider == "CUDAExecutionProvider" and "GroupQueryAttention" in json.loads(
            (path / EXPORT_INFO).read_text()).get("decoder", "")
        if dtype == "auto":
            present = [d for d in DTYPES if all((path / onnx_file(d, g)).is_file() for g in GRAPH_NAMES)]
            if gqa_on_cuda and "fp16" in present:
                present.remove("fp16")
                present.insert(0, "fp16")
            dtype = present[0] if present else DTYPES[0]  # none complete: fp32's missing files are named below
        elif dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: expected 'auto' or one of {', '.join(DTYPES)}.")
        if gqa_on_cuda and dtype != "fp16":
            raise ValueError(
                f"{path} holds the GroupQueryAttention decoder, which runs on CUDA in fp16 only (dtype={dtype!r} was "
                "asked for): export with --dtype fp16 and load dtype='fp16', or export with --optimize none."
            )
        files = {g: path / onnx_file(dtype, g) for g in GRAPH_NAMES}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"dtype={dtype!r}: missing {', '.join(missing)}; export with --dtype {dtype}.")
        if provider not in ort.get_available_providers():
            available = ort.get_available_providers()
            warnings.warn(f"{provider} is not available in this onnxruntime ({available}); using CPU.", stacklevel=2)
        providers = [(provider, provider_options or {})]
        if provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        options = session_options or ort.SessionOptions()
        sessions = {
            g: ort.InferenceSession(str(f), sess_options=options, providers=providers) for g, f in files.items()
        }
        used = sessions["decoder_model_merged"].get_providers()[0]
        if used != provider:
            warnings.warn(f"{provider} was requested but ONNX Runtime runs on {used}.", stacklevel=2)
        logger.info("loaded %s (%s) from %s on %s", ", ".join(onnx_file(dtype, g) for g in GRAPH_NAMES), dtype,
                    path, used)
        config_dict, _ = LlavaConfig.get_config_dict(path)
        config_dict["model_type"] = LlavaConfig.model_type  # the file says `llava`, for transformers.js
        config = LlavaConfig.from_dict(config_dict)
        generation_config = None
        if (path / "generation_config.json").is_file():
            generation_config = GenerationConfig.from_pretrained(path)
        return cls(config, sessions, generation_config)

    # graphs

    def _run_vision(self, pixel_values) -> list[np.ndarray]:
        dtype = _ORT_TYPES[self.vision_session.get_inputs()[0].type]
        return self.vision_session.run(None, {"pixel_values": _numpy(pixel_values).astype(dtype)})

    def get_image_features(self, pixel_values, image_sizes=None) -> Union[np.ndarray, tuple[np.ndarray, ...]]:
        """`(num_images, 3, H, W)` -> `(num_images, num_image_tokens, hidden)`.

        AnyRes: `pixel_values (num_images, max_tiles, 3, H, W)` (or the images' tiles concatenated) with
        `image_sizes (num_images, 2)` (height, width) -> a tuple of packed `(tokens_i, hidden)`, one per image, as
        PyTorch's `get_image_features`: the graph encodes the tiles, `pack_anyres` lays them out.
        """
        if self.config.image_aspect_ratio != "anyres":
            return self._run_vision(pixel_values)[0]
        tiles, sizes, tiles_per_image = anyres_tiles(  # (total_tiles, C, H, W)
            torch.as_tensor(_numpy(pixel_values)), image_sizes, self.config)
        names = [output.name for output in self.vision_session.get_outputs()]
        outputs = {name: torch.from_numpy(value) for name, value in zip(names, self._run_vision(tiles))}
        features = outputs["image_features"]  # (total_tiles, tokens_per_tile, hidden)
        return tuple(
            pack_anyres(tile_features, size, self.config, outputs.get(IMAGE_NEWLINE)).numpy()
            for tile_features, size in zip(torch.split(features, tiles_per_image), sizes)
        )

    def embed(self, input_ids: np.ndarray, pixel_values=None, image_sizes=None) -> np.ndarray:
        """`input_ids (B, T)` -> `inputs_embeds (B, T, hidden)`, image features written at the image tokens."""
        embeds = self.embed_session.run(None, {"input_ids": input_ids.astype(np.int64)})[0]
        is_image = input_ids == self.config.image_token_id
        if pixel_values is None:
            if is_image.any():
                raise ValueError(
                    f"input_ids hold {int(is_image.sum())} image tokens but no pixel_values were given; pass the "
                    "processor's pixel_values, or a prompt without '<image>'."
                )
            return embeds
        features = self.get_image_features(pixel_values, image_sizes)
        if isinstance(features, tuple):  # AnyRes: each image's own count
            counts = [len(f) for f in features]
            expected = f"{len(counts)} image(s) packed to {counts} tokens (AnyRes: by each image's size)"
            features = np.concatenate(features)  # (total_image_tokens, H)
        else:  # (N, tokens, H)
            counts = [features.shape[1]] * features.shape[0]
            expected = f"{features.shape[0]} image(s) x {features.shape[1]} tokens"
        if int(is_image.sum()) != sum(counts):
            raise ValueError(
                f"The prompt has {int(is_image.sum())} image tokens (id {self.config.image_token_id}) but {expected} "
                f"= {sum(counts)} were expected; put one '<image>' per image and let LlavaProcessor expand it."
            )
        # row-major order, as torch.masked_scatter
        embeds[is_image] = features.reshape(-1, features.shape[-1]).astype(embeds.dtype)
        return embeds

    def _empty_past(self, batch: int) -> list:
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.float_dtype)
        if self.use_io_binding:
            return [ort.OrtValue.ortvalue_from_numpy(empty, "cuda", 0) for _ in range(2 * self.num_layers)]
        return [empty] * (2 * self.num_layers)

    def decode_step(
        self, inputs_embeds, attention_mask, position_ids, past: list, keep: int = 0
    ) -> tuple[np.ndarray, list]:
        """One run of the traced decoder -> `logits (B, keep or T, vocab)` (numpy, on the host) and the new cache
        (`2 * layers` items)."""
        feeds = {
            "inputs_embeds": inputs_embeds.astype(self.float_dtype),
            "attention_mask": attention_mask.astype(np.int64),
            "position_ids": position_ids.astype(np.int64),
        }
        if self.keeps_logits:
            feeds[NUM_LOGITS_TO_KEEP] = np.array(keep, np.int64)
        if not self.use_io_binding:
            feeds.update(zip(past_names(self.num_layers), past))
            logits, *present = self.decoder_session.run(None, feeds)
            return logits, present
        # CUDA: the cache never leaves the device; only the small inputs go up and the logits come down.
        binding = self.decoder_session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in zip(past_names(self.num_layers), past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in present_names(self.num_layers):
            binding.bind_output(name, "cuda", 0)
        self.decoder_session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy(), present

    # the GroupQueryAttention decoder

    def _kv_buffers(self, batch: int, max_length: int) -> list:
        """One `(B, kv_heads, max_length, head_dim)` buffer per layer's keys and values, on the decoder's device."""
        device = "cuda" if self.use_io_binding else "cpu"
        shape = [batch, self.kv_heads, max_length, self.head_dim]
        return [ort.OrtValue.ortvalue_from_shape_and_type(shape, self.float_dtype, device, 0)
                for _ in range(2 * self.num_layers)]

    def kv_binding(self, buffers: list, first_row: int = 0, rows: Optional[int] = None):
        """An IOBinding of buffer rows `first_row ..` (`rows` of them, default all) as both the GQA decoder's past
        and its present: the same memory, which the op writes in place. Reused across steps: only the inputs and
        the logits are bound again."""
        device = "cuda" if self.use_io_binding else "cpu"
        binding = self.decoder_session.io_binding()
        for past_name, present_name, buffer in zip(past_names(self.num_layers), present_names(self.num_layers),
                                                    buffers):
            full = buffer.shape()
            row_bytes = int(np.prod(full[1:])) * np.dtype(self.float_dtype).itemsize
            shape = [full[0] - first_row if rows is None else rows, *full[1:]]
            pointer = buffer.data_ptr() + first_row * row_bytes
            binding.bind_input(past_name, device, 0, self.float_dtype, shape, pointer)
            binding.bind_output(present_name, device, 0, self.float_dtype, shape, pointer)
        binding.kv_buffers = buffers  # the binding holds raw pointers into them: they live as long as it does
        return binding

    def gqa_step(self, inputs_embeds: np.ndarray, lengths: np.ndarray, binding, keep: int = 0) -> np.ndarray:
        """One run of the GQA decoder on the rows `binding` holds (`kv_binding`): row r's `(T, hidden)` tokens are
        its last ones, `lengths[r]` tokens in all (cached + these). -> `logits (B, keep or T, vocab)` on the host."""
        batch, length = inputs_embeds.shape[:2]
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(inputs_embeds, dtype=self.float_dtype))
        # (B, max length): row r's first lengths[r] positions hold tokens; the op reads positions from the sums
        binding.bind_cpu_input("attention_mask", (np.arange(lengths.max()) < lengths[:, None]).astype(np.int64))
        if self.keeps_logits:
            binding.bind_cpu_input(NUM_LOGITS_TO_KEEP, np.array(keep, np.int64))
        # into an array of ours: get_outputs() would wrap every present buffer too, at each step
        logits = np.empty((batch, (keep or length) if self.keeps_logits else length,
                           self.config.text_config.vocab_size), dtype=self.float_dtype)
        binding.bind_output("logits", "cpu", 0, self.float_dtype, list(logits.shape), logits.ctypes.data)
        self.decoder_session.run_with_iobinding(binding)
        return logits

    def _gqa_prefill(self, embeds: np.ndarray, mask: np.ndarray, buffers: list, keep: int) -> list[np.ndarray]:
        """Each prompt alone into its buffer row (only its real tokens, wherever the padding was) -> per row
        `logits (1, keep or its length, vocab)`."""
        return [self.gqa_step(embeds[row:row + 1, mask[row] == 1], mask[row:row + 1].sum(-1),
                              self.kv_binding(buffers, row, 1), keep)
                for row in range(len(embeds))]

    # both decoders

    def _stepper(self, mask: np.ndarray, max_new_tokens: int):
        """`step(inputs_embeds) -> last-position logits (B, vocab)`: the prompt's on the first call (`mask (B, T)`,
        left padding), then one new token per row per call."""
        batch = len(mask)
        if self.gqa:
            lengths = mask.sum(-1)
            buffers = self._kv_buffers(batch, int(lengths.max()) + max_new_tokens)
            binding = self.kv_binding(buffers)
            first = True

            def step(embeds: np.ndarray) -> np.ndarray:
                nonlocal first, lengths
                if first:
                    first = False
                    return np.concatenate([row[:, -1] for row in self._gqa_prefill(embeds, mask, buffers, keep=1)])
                lengths = lengths + 1
                return self.gqa_step(embeds, lengths, binding, keep=1)[:, -1]
            return step

        past = self._empty_past(batch)
        position_ids = _prompt_positions(mask)

        def step(embeds: np.ndarray) -> np.ndarray:
            nonlocal past, mask, position_ids
            logits, past = self.decode_step(embeds, mask, position_ids, past, keep=1)
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=-1)
            position_ids = mask.sum(-1, keepdims=True) - 1  # (B, 1)
            return logits[:, -1]
        return step

    def first_step_logits(
        self, input_ids, attention_mask=None, pixel_values=None, image_sizes=None, **_
    ) -> np.ndarray:
        """Prefill logits `(B, T, vocab)` for a prompt, every position (what validation compares with PyTorch;
        padded positions: garbage with the traced decoder, 0 with the GQA one)."""
        input_ids = _numpy(input_ids)
        attention_mask = np.ones_like(input_ids) if attention_mask is None else _numpy(attention_mask)
        embeds = self.embed(input_ids, _numpy(pixel_values), image_sizes)
        if self.gqa:
            buffers = self._kv_buffers(len(input_ids), input_ids.shape[1])
            rows = self._gqa_prefill(embeds, attention_mask, buffers, keep=0)
            logits = np.zeros((*input_ids.shape, rows[0].shape[-1]), dtype=rows[0].dtype)
            for row, row_logits in enumerate(rows):
                logits[row, attention_mask[row] == 1] = row_logits[0]
            return logits
        position_ids = _prompt_positions(attention_mask)
        return self.decode_step(embeds, attention_mask, position_ids, self._empty_past(len(input_ids)))[0]

    # generation

    @staticmethod
    def _check_fields(config: GenerationConfig) -> None:
        """Refuse, by name, every field set away from its default that the loop would otherwise ignore."""
        defaults = complete_generation_config(GenerationConfig()).to_dict()

        def is_default(key: str, value) -> bool:
            # None, False and 0 all mean "off" (5.x leaves unset fields None where 4.57 has False or 0)
            default = defaults.get(key)
            return value == default or (value in (None, False) and default in (None, False))

        refused = {k: v for k, v in config.to_dict().items()
                   if k not in SUPPORTED_FIELDS | NO_EFFECT_FIELDS and not is_default(k, v)}
        if refused:
            listed = ", ".join(f"{k}={v!r}" for k, v in sorted(refused.items()))
            raise ValueError(
                f"ORTLlavaForConditionalGeneration.generate does not implement {listed} (greedy or sampled decoding "
                "only: no beam / contrastive / assisted search); leave them at their defaults or use PyTorch."
            )

    @staticmethod
    def _logits_processors(
        config: GenerationConfig, prompt_length: int, eos: Optional[torch.Tensor], extra: LogitsProcessorList
    ) -> LogitsProcessorList:
        """The processors transformers' `_get_logits_processor` builds for the supported fields, in its order."""
        processors = LogitsProcessorList()
        if config.sequence_bias is not None:
            processors.append(SequenceBiasLogitsProcessor(config.sequence_bias))
        if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.no_repeat_ngram_size is not None and config.no_repeat_ngram_size > 0:
            processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        if config.bad_words_ids is not None:
            processors.append(NoBadWordsLogitsProcessor(config.bad_words_ids, eos))
        if config.min_length is not None and config.min_length > 0 and eos is not None:
            processors.append(MinLengthLogitsProcessor(config.min_length, eos))
        if config.min_new_tokens is not None and config.min_new_tokens > 0 and eos is not None:
            processors.append(MinNewTokensLengthLogitsProcessor(prompt_length, config.min_new_tokens, eos))
        if config.forced_eos_token_id is not None:
            processors.append(ForcedEOSTokenLogitsProcessor(config.max_length, config.forced_eos_token_id))
        if config.suppress_tokens is not None:
            processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens))
        if config.begin_suppress_tokens is not None:
            processors.append(SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, prompt_length))
        processors.extend(extra)  # the caller's, before the warpers, as transformers merges them
        if config.do_sample:
            if config.temperature is not None and config.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k:
                processors.append(TopKLogitsWarper(config.top_k))
            if config.top_p is not None and config.top_p < 1.0:
                processors.append(TopPLogitsWarper(config.top_p))
        return processors

    @staticmethod
    def _stopping_criteria(
        config: GenerationConfig, eos: torch.Tensor, tokenizer, extra: Optional[list[StoppingCriteria]]
    ) -> StoppingCriteriaList:
        """The criteria transformers' `_get_stopping_criteria` builds for the supported fields (`max_length` is the
        loop's bound instead of a `MaxLengthCriteria`), then the caller's, which replace built ones of their type."""
        criteria = StoppingCriteriaList()
        if config.stop_strings is not None:
            if tokenizer is None:
                raise ValueError(
                    f"stop_strings={config.stop_strings!r} need the tokenizer to match text against tokens; pass "
                    "generate(..., tokenizer=processor.tokenizer)."
                )
            criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=config.stop_strings))
        if len(eos):
            criteria.append(EosTokenCriteria(eos))
        extra = list(extra or [])
        return StoppingCriteriaList([c for c in criteria if not any(type(e) is type(c) for e in extra)] + extra)

    def generate(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        generation_config: Optional[GenerationConfig] = None,
        logits_processor: Optional[LogitsProcessorList] = None,
        image_sizes=None,
        stopping_criteria: Optional[Union[StoppingCriteriaList, list[StoppingCriteria]]] = None,
        streamer: Optional[BaseStreamer] = None,
        tokenizer: Optional[PreTrainedTokenizerBase] = None,
        **kwargs,
    ) -> Union[torch.LongTensor, GenerateDecoderOnlyOutput]:
        """Greedy or sampled generation; `kwargs` are `GenerationConfig` fields (`max_new_tokens`, `do_sample`...).

        Fields outside `SUPPORTED_FIELDS` / `NO_EFFECT_FIELDS` set away from their defaults (`num_beams=3`...)
        raise `ValueError` naming them, whether they come from `kwargs`, `generation_config` or the folder's
        `generation_config.json`.

        `input_ids`, `attention_mask` `(B, T)`, left-padded for batches; `pixel_values` `(num_images, 3, H, W)`
        for the `<image>` tokens in row order (AnyRes: `(num_images, max_tiles, 3, H, W)` with `image_sizes`).
        Returns `(B, T + new)`; finished rows are filled with the pad token.
        With `return_dict_in_generate=True`: a `GenerateDecoderOnlyOutput` with `logits` / `scores` (one `(B, vocab)`
        per step) when `output_logits` / `output_scores` are set, as transformers.

        As transformers' `generate` (its `_sample` loop): `stopping_criteria` are called after each step with
        `(ids so far, scores)` and return a `(B,)` bool tensor; a row is finished when it emits an eos token or a
        criterion says so, and the loop ends when every row is finished or `max_new_tokens` is reached. When an eos
        token is set, finished rows get the pad token from then on (without one, as in transformers, a row stopped
        by a criterion keeps generating until all rows stop). `stop_strings` need `tokenizer` (transformers'
        `StopStringCriteria`). `streamer` (a `BaseStreamer`, e.g. `TextIteratorStreamer` for batch 1) gets
        `put(prompt ids (B, T))`, then `put(new tokens (B,))` after each step (pad tokens for finished rows), then
        `end()`.
        """
        config = copy.deepcopy(generation_config or self.generation_config)
        unused = config.update(**{k: v for k, v in kwargs.items() if k != "token_type_ids"})
        if unused:
            raise TypeError(f"generate() got unknown arguments {sorted(unused)}; expected GenerationConfig fields.")
        complete_generation_config(config, self.generation_config)  # unset fields as transformers' generate fills them
        ids = torch.as_tensor(_numpy(input_ids), dtype=torch.long)
        if attention_mask is None:
            mask = np.ones(tuple(ids.shape), np.int64)
        else:
            mask = _numpy(attention_mask).astype(np.int64)
        batch, prompt_length = ids.shape
        self._check_fields(config)
        if config.max_new_tokens is not None:
            max_new = config.max_new_tokens
            config.max_length = prompt_length + max_new  # as transformers: forced_eos_token_id counts on it
        else:
            max_new = max(0, config.max_length - prompt_length)
        eos = config.eos_token_id
        eos = torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else list(eos), dtype=torch.long)
        pad = config.pad_token_id if config.pad_token_id is not None else (int(eos[0]) if len(eos) else 0)
        processors = self._logits_processors(config, prompt_length, eos if len(eos) else None,
                                             logits_processor or LogitsProcessorList())
        criteria = self._stopping_criteria(config, eos, tokenizer, stopping_criteria)
        pad_finished = any(hasattr(c, "eos_token_id") for c in criteria)  # transformers' has_eos_stopping_criteria

        embeds = self.embed(ids.numpy(), _numpy(pixel_values), image_sizes)
        step = self._stepper(mask, max_new)
        unfinished = torch.ones(batch, dtype=torch.bool)
        raw_logits, all_scores = [], []
        # what transformers hands to stopping criteria as `scores`: the scores so far when kept, else None
        keep_scores = config.return_dict_in_generate and config.output_scores
        if streamer is not None:
            streamer.put(ids)  # (B, T)
        for _ in range(max_new):
            step_logits = torch.from_numpy(step(embeds).astype(np.float32))  # (B, vocab)
            scores = processors(ids, step_logits.clone())
            raw_logits.append(step_logits)
            all_scores.append(scores)
            if config.do_sample:
                next_tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                next_tokens = scores.argmax(dim=-1)
            if pad_finished:
                next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad))
            ids = torch.cat([ids, next_tokens[:, None]], dim=-1)
            if streamer is not None:
                streamer.put(next_tokens)  # (B,)
            unfinished &= ~criteria(ids, tuple(all_scores) if keep_scores else None)
            if not unfinished.any():
                break
            embeds = self.embed_session.run(None, {"input_ids": next_tokens[:, None].numpy()})[0]
        if streamer is not None:
            streamer.end()
        if config.return_dict_in_generate:
            return GenerateDecoderOnlyOutput(
                sequences=ids,
                logits=tuple(raw_logits) if config.output_logits else None,
                scores=tuple(all_scores) if config.output_scores else None,
            )
        return ids

    def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_sizes=None, **_) -> torch.Tensor:
        """Prefill logits `(B, T, vocab)` as a torch tensor."""
        return torch.from_numpy(self.first_step_logits(input_ids, attention_mask, pixel_values, image_sizes))

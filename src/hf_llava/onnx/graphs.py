"""The three exportable graphs of a LLaVA model and their ONNX export with `torch.onnx.export`.

Owns: the wrapper modules (vision encoder + projector, token embeddings, decoder with a flat KV
cache), the 4-D attention mask the decoder builds for itself, and the dynamic axes of the
transformers.js / onnx-community layout (its names live in `layout.py`).

AnyRes (LLaVA-NeXT): the vision graph maps tiles to their projected features, and (`spatial_unpad`) returns
the learned `image_newline` as a second output, so that it travels with the graph's weights and dtype. The
packing (grid, unpadding, newlines, overview first) depends on each image's size: it runs outside the graph,
with `modeling_llava.pack_anyres`, as in PyTorch.

Why not Optimum: optimum 2.1 / optimum-onnx 0.1 know no llava (no VLM) architecture, and their
custom-config route exports one `PreTrainedModel.forward` per file; our three graphs are slices
of one model (the projector inside the vision graph, the splice outside every graph), so we trace
small wrapper modules with the TorchScript exporter (`dynamo=False`: the dynamo exporter does not
take `dynamic_axes`, and its data-dependent shape guards on the empty first-step cache fail).

Why our own mask: transformers >= 4.53 builds its sdpa mask with `vmap`, which the tracer cannot
record, and its "skip the mask when it is all ones" shortcut would be frozen into the graph by
tracing. A 4-D additive mask goes straight through (`create_causal_mask` returns 4-D masks as
given), so the graph is right for any batch, padding, prompt length and past length.
"""

import warnings
from pathlib import Path

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from .._compat import CACHE_NAME
from .layout import IMAGE_NEWLINE, NUM_LOGITS_TO_KEEP, kv_shape, past_names, present_names


class VisionEncoder(nn.Module):
    """`pixel_values (num_images, 3, H, W)` -> `image_features (num_images, num_image_tokens, hidden)`.

    AnyRes: `pixel_values (num_tiles, 3, H, W)` -> `image_features (num_tiles, tokens_per_tile, hidden)`, plus
    `image_newline (hidden,)` for `spatial_unpad`.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.image_newline = getattr(model.model, "image_newline", None)

    def forward(self, pixel_values: torch.Tensor):
        features = self.model.model.tile_features(pixel_values)  # a tile goes through as a 1.5 image does
        if self.image_newline is None:
            return features
        return features, self.image_newline  # exported as an Identity of the weight, named by `IMAGE_NEWLINE`


class EmbedTokens(nn.Module):
    """`input_ids (B, T)` -> `inputs_embeds (B, T, hidden)`."""

    def __init__(self, model):
        super().__init__()
        self.embed = model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


def causal_mask_4d(attention_mask: torch.Tensor, query_length: int, dtype: torch.dtype) -> torch.Tensor:
    """`attention_mask (B, past + T)` of 0/1 -> additive mask `(B, 1, T, past + T)`.

    Query `i` sits at absolute position `past + i` and sees key `j` when `j <= past + i` and key `j`
    is not padding. Masked entries get `finfo.min` (not -inf), so a row that sees nothing (a left
    pad) softmaxes to a uniform row instead of NaN.
    """
    kv_length = attention_mask.shape[1]
    past = kv_length - query_length
    q_pos = torch.arange(query_length, device=attention_mask.device).unsqueeze(1) + past  # (T, 1)
    k_pos = torch.arange(kv_length, device=attention_mask.device).unsqueeze(0)  # (1, K)
    allowed = (k_pos <= q_pos).unsqueeze(0) & attention_mask.bool().unsqueeze(1)  # (B, T, K)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


class Decoder(nn.Module):
    """The LM + head with a flat KV cache (one `(B, kv_heads, past, head_dim)` tensor per key/value).

    `inputs_embeds (B, T, hidden)`, `attention_mask (B, past + T)`, `position_ids (B, T)`, `num_logits_to_keep ()`,
    `*past` -> `logits (B, keep, vocab)` (keep = `num_logits_to_keep`, or T when it is 0), `*present` (each
    `(B, kv_heads, past + T, head_dim)`). Generation asks for the last position only: a prefill then neither
    computes nor copies `T x vocab` logits per row.
    """

    def __init__(self, model):
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.num_layers = model.config.text_config.num_hidden_layers

    def forward(self, inputs_embeds, attention_mask, position_ids, num_logits_to_keep, *past):
        cache = DynamicCache()
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        query_length = inputs_embeds.shape[1]
        past_length = past[0].shape[2]
        cache_position = torch.arange(query_length, device=inputs_embeds.device) + past_length
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=causal_mask_4d(attention_mask, query_length, inputs_embeds.dtype),
            position_ids=position_ids,
            cache_position=cache_position,
            use_cache=True,
            return_dict=True,
            **{CACHE_NAME: cache},
        )
        hidden = outputs.last_hidden_state  # (B, T, hidden)
        keep = torch.where(num_logits_to_keep > 0, num_logits_to_keep, query_length)
        # a Range + Gather in the graph: both bounds stay dynamic (a Python slice would freeze them)
        hidden = hidden.index_select(1, torch.arange(query_length - keep, query_length, device=hidden.device))
        logits = self.lm_head(hidden)  # (B, keep, vocab)
        present = []
        for layer in getattr(outputs, CACHE_NAME).layers:
            present += [layer.keys, layer.values]
        return (logits, *present)


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes, opset: int) -> None:
    # The tracer warns about every Python bool it freezes; the ones these graphs hit do not depend on a
    # dynamic axis (the attention mask is always given, image size is fixed), as validation checks.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def export_vision_encoder(model, path: Path, opset: int) -> None:
    """Writes `vision_encoder.onnx`: `pixel_values` -> `image_features` (projector included); AnyRes: per tile,
    and `image_newline` for `spatial_unpad`."""
    size = model.config.vision_config.image_size
    pixel_values = torch.randn(2, 3, size, size)
    encoder = VisionEncoder(model)
    rows = "num_tiles" if model.config.image_aspect_ratio == "anyres" else "num_images"
    outputs = ["image_features"] + ([IMAGE_NEWLINE] if encoder.image_newline is not None else [])
    _export(
        encoder, (pixel_values,), path, ["pixel_values"], outputs,
        {"pixel_values": {0: rows}, "image_features": {0: rows}}, opset,
    )


def export_embed_tokens(model, path: Path, opset: int) -> None:
    """Writes `embed_tokens.onnx`: `input_ids` -> `inputs_embeds`."""
    input_ids = torch.tensor([[1, 5, 7], [1, 9, 11]], dtype=torch.long)
    _export(
        EmbedTokens(model), (input_ids,), path, ["input_ids"], ["inputs_embeds"],
        {"input_ids": {0: "batch_size", 1: "sequence_length"},
         "inputs_embeds": {0: "batch_size", 1: "sequence_length"}},
        opset,
    )


def export_decoder(model, path: Path, opset: int) -> None:
    """Writes `decoder_model_merged.onnx`: one graph for the first step (past length 0) and later steps.

    Traced with a non-empty past (2 tokens) and a 3-token query with left padding, so that no size is
    frozen to 0 or 1; dynamic axes free batch, sequence, past and total lengths.
    """
    text_config = model.config.text_config
    num_layers = text_config.num_hidden_layers
    heads, head_dim = kv_shape(text_config)
    batch, past_len, seq_len = 2, 2, 3
    inputs_embeds = torch.randn(batch, seq_len, text_config.hidden_size)
    attention_mask = torch.ones(batch, past_len + seq_len, dtype=torch.long)
    attention_mask[1, 0] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past_len:]
    past = [torch.randn(batch, heads, past_len, head_dim) for _ in range(2 * num_layers)]
    num_logits_to_keep = torch.tensor(2)  # neither 0 nor 1 nor T: no branch is frozen
    dynamic_axes = {
        "inputs_embeds": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "kept_sequence_length"},
    }
    for name in past_names(num_layers):
        dynamic_axes[name] = {0: "batch_size", 2: "past_sequence_length"}
    for name in present_names(num_layers):
        dynamic_axes[name] = {0: "batch_size", 2: "total_sequence_length"}
    _export(
        Decoder(model), (inputs_embeds, attention_mask, position_ids, num_logits_to_keep, *past), path,
        ["inputs_embeds", "attention_mask", "position_ids", NUM_LOGITS_TO_KEEP, *past_names(num_layers)],
        ["logits", *present_names(num_layers)], dynamic_axes, opset,
    )

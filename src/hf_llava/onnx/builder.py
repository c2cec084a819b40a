"""The optimised decoder of `export_onnx(optimize="gqa")`, made by onnxruntime-genai's model builder.

Owns: whether the builder can make this LM's decoder here (`unavailable_reason`), running it on the LLaVA's
language model (saved alone, as a causal LM folder, with its tokenizer), and the one edit we make to its graph
(the `num_logits_to_keep` input of the traced decoder, so both decoders answer the same feeds).

Why the builder: it is the ONNX Runtime team's own generator of fast decoders. Its graph runs attention as
`GroupQueryAttention` (rotary embedding inside, the KV cache one buffer per layer that the op writes in place,
no copy per token) with `SkipSimplifiedLayerNormalization` and fused QKV projections; ONNX Runtime's transformer
optimizer finds only the norms in a traced Llama graph. With `exclude_embeds=true` the decoder takes
`inputs_embeds`, as LLaVA's image splice needs. Its own runtime cannot be fed `inputs_embeds` for a plain LM,
so `ORTLlavaForConditionalGeneration` runs the graph with its own loop.

The graph's conventions differ from the traced one: no `position_ids` (the op derives positions from the
attention mask), and each row's tokens start at position 0 of the buffer (right padding), which the runtime
handles.
"""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import transformers

from .layout import NUM_LOGITS_TO_KEEP

BUILDER_MODULE = "onnxruntime_genai.models.builder"
# The LM types whose builder output we validate in tests; the builder knows more, none of them checked here.
SUPPORTED_LM_TYPES = ("llama", "mistral", "qwen2")
# dtype -> (builder precision, builder execution provider). fp16 is the builder's CUDA graph (it also runs on CPU).
PRECISIONS = {"fp32": ("fp32", "cpu"), "fp16": ("fp16", "cuda")}


def unavailable_reason(text_config) -> Optional[str]:
    """Why the builder cannot make this LM's decoder here, or None when it can."""
    if text_config.model_type not in SUPPORTED_LM_TYPES:
        return (f"the LM is {text_config.model_type!r}; the GQA decoder is made for "
                f"{', '.join(SUPPORTED_LM_TYPES)}")
    if int(transformers.__version__.split(".")[0]) < 5:
        return f"onnxruntime-genai's model builder needs transformers 5.x (this is {transformers.__version__})"
    for module, package in (("onnxruntime_genai", "onnxruntime-genai"), ("onnx_ir", "onnx-ir")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install 'hf-llava[onnx]')"
    return None


def builder_version() -> str:
    return importlib.metadata.version("onnxruntime-genai")


def _save_language_model(model, tokenizer, folder: Path) -> None:
    """The LLaVA's LM + head as a causal-LM folder (config with its architecture, safetensors, tokenizer)."""
    from safetensors.torch import save_file
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    text_config = model.config.text_config
    config = text_config.__class__.from_dict(text_config.to_dict())
    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[text_config.model_type]]  # the builder picks by it
    config.save_pretrained(folder)
    weights = {f"model.{k}": v.detach().float().contiguous() for k, v in
               model.model.language_model.state_dict().items()}
    weights["lm_head.weight"] = model.lm_head.weight.detach().float().clone()  # untied: safetensors refuses shared
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)  # the builder reads it for its own config


def _keep_last_logits(graph_model) -> None:
    """Insert `num_logits_to_keep` (scalar int64; 0 = every position) before the LM head, as in the traced graph:
    hidden (B, T, H) -> Gather(hidden, Range(T - keep, T), axis=1) -> head -> logits (B, keep, vocab)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    graph = graph_model.graph
    head = next(node for node in graph.node if "logits" in node.output)
    hidden, prefix = head.input[0], "/hf_llava/keep_logits"
    graph.input.append(helper.make_tensor_value_info(NUM_LOGITS_TO_KEEP, TensorProto.INT64, []))
    graph.initializer.extend([
        onnx.numpy_helper.from_array(np.array(v, dtype=np.int64), f"{prefix}/{n}")
        for n, v in (("zero", 0), ("one", 1))
    ])
    nodes = [
        helper.make_node("Shape", [hidden], [f"{prefix}/shape"]),
        helper.make_node("Gather", [f"{prefix}/shape", f"{prefix}/one"], [f"{prefix}/length"], axis=0),
        helper.make_node("Greater", [NUM_LOGITS_TO_KEEP, f"{prefix}/zero"], [f"{prefix}/given"]),
        helper.make_node("Where", [f"{prefix}/given", NUM_LOGITS_TO_KEEP, f"{prefix}/length"], [f"{prefix}/keep"]),
        helper.make_node("Sub", [f"{prefix}/length", f"{prefix}/keep"], [f"{prefix}/start"]),
        helper.make_node("Range", [f"{prefix}/start", f"{prefix}/length", f"{prefix}/one"], [f"{prefix}/index"]),
        helper.make_node("Gather", [hidden, f"{prefix}/index"], [f"{prefix}/hidden"], axis=1),
    ]
    head.input[0] = f"{prefix}/hidden"
    position = list(graph.node).index(head)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    for output in graph.output:
        if output.name == "logits":
            output.type.tensor_type.shape.dim[1].dim_param = "kept_sequence_length"


def build_decoder(model, tokenizer, path: Path, dtype: str = "fp32") -> None:
    """Write the builder's decoder for `model`'s LM to `path` (`decoder_model_merged*.onnx`, weights inline below
    2 GB, else beside it in `<name>_data`). Raises RuntimeError with the builder's last lines if it fails."""
    import onnx

    precision, provider = PRECISIONS[dtype]
    with tempfile.TemporaryDirectory() as tmp:
        lm_dir, out_dir = Path(tmp) / "lm", Path(tmp) / "out"
        lm_dir.mkdir()
        _save_language_model(model, tokenizer, lm_dir)
        command = [sys.executable, "-m", BUILDER_MODULE, "-i", str(lm_dir), "-o", str(out_dir), "-p", precision,
                   "-e", provider, "-c", str(Path(tmp) / "cache"), "--extra_options", "exclude_embeds=true"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0 or not (out_dir / "model.onnx").is_file():
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise RuntimeError(
                f"onnxruntime-genai {builder_version()}'s model builder failed on the "
                f"{model.config.text_config.model_type} LM ({precision}, {provider}):\n{tail}\n"
                "Export with optimize='none' (--optimize none) to trace the decoder instead."
            )
        graph_model = onnx.load(str(out_dir / "model.onnx"))  # external weights too
        _keep_last_logits(graph_model)
        large = sum(t.ByteSize() for t in graph_model.graph.initializer) > 1_800_000_000
        onnx.save(graph_model, str(path), save_as_external_data=large, location=f"{path.name}_data")

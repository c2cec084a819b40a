"""A tiny LLaVA (and a tiny AnyRes LLaVA-NeXT) exported once per module, for tests that run the ORT model."""

import pytest
import torch

import hf_llava
from hf_llava import tiny


def _export(tmp_path_factory, config, tokenizer, validate: bool):
    """`(torch_model, processor, out_dir)`: a model from `config` (seed 0), saved with its processor and exported."""
    pytest.importorskip("onnxruntime")
    from hf_llava.onnx import export_onnx

    torch.manual_seed(0)
    model = hf_llava.LlavaForConditionalGeneration(config).eval()
    processor = tiny.build_processor(tokenizer, config)
    root = tmp_path_factory.mktemp("exported")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    out = export_onnx(root / "model", root / "onnx", validate=validate, show_progress=False)
    return model, processor, out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_config, tokenizer):
    """The `tiny_model` fixture's model (seed 0) and its fp32 export (not validated)."""
    return _export(tmp_path_factory, tiny_config, tokenizer, validate=False)


@pytest.fixture(scope="module")
def exported_next(tmp_path_factory, next_config, tokenizer):
    """The `next_model` fixture's AnyRes model (seed 0) and its fp32 export, validated by the exporter (greedy
    tokens of two aspect ratios against PyTorch)."""
    return _export(tmp_path_factory, next_config, tokenizer, validate=True)

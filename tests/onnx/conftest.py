"""A tiny LLaVA exported once per module (fp32, no validation), for tests that only run the ORT model."""

import pytest
import torch

import hf_llava
from hf_llava import tiny


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_config, tokenizer):
    """`(torch_model, processor, out_dir)`: the `tiny_model` fixture's model (seed 0) and its fp32 export."""
    pytest.importorskip("onnxruntime")
    from hf_llava.onnx import export_onnx

    torch.manual_seed(0)
    model = hf_llava.LlavaForConditionalGeneration(tiny_config).eval()
    processor = tiny.build_processor(tokenizer, tiny_config)
    root = tmp_path_factory.mktemp("exported")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    out = export_onnx(root / "model", root / "onnx", validate=False, show_progress=False)
    return model, processor, out

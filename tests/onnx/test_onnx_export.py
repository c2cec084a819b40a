"""ONNX export and ONNX Runtime generation: layout, greedy parity with PyTorch, int8, atomicity, CLI."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import numpy as np
import onnx
import onnxruntime as ort

from transformers import LlamaConfig

from hf_llava.cli import main
from hf_llava.onnx import ORTLlavaForConditionalGeneration, export_onnx
from hf_llava.onnx.builder import unavailable_reason

GRAPHS = ("vision_encoder", "embed_tokens", "decoder_model_merged")
GQA_UNAVAILABLE = unavailable_reason(LlamaConfig())  # the tiny models' LM is a Llama
# both decoders `export_onnx` makes: traced (transformers.js's layout) and onnxruntime-genai's GroupQueryAttention one
DECODERS = [
    "none",
    pytest.param("gqa", marks=pytest.mark.skipif(GQA_UNAVAILABLE is not None,
                                                 reason=f"GQA decoder: {GQA_UNAVAILABLE}")),
]


def _prompts(processor, images, texts):
    return processor(images=images, text=texts, padding=True, return_tensors="pt")


@pytest.mark.parametrize("optimize", DECODERS)
def test_fp32_export_layout_and_greedy_parity(saved_llava, tmp_path, tiny_model, tiny_processor, images, optimize):
    out = export_onnx(saved_llava, tmp_path / "onnx-out", show_progress=False, optimize=optimize)
    for graph in GRAPHS:
        assert (out / "onnx" / f"{graph}.onnx").is_file()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.safetensors"))
    info = json.loads((out / "onnx" / "export_info.json").read_text())
    assert info["validation"]["tokens_match"] and info["validation"]["provider"] == "CPUExecutionProvider"

    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out)
    decoder_inputs = [i.name for i in ort_model.decoder_session.get_inputs()]
    decoder_ops = {node.op_type for node in onnx.load(str(out / "onnx" / "decoder_model_merged.onnx")).graph.node}
    assert "num_logits_to_keep" in decoder_inputs and ort_model.gqa == (optimize == "gqa")
    if optimize == "none":
        assert decoder_inputs[:4] == ["inputs_embeds", "attention_mask", "position_ids", "num_logits_to_keep"]
        assert json.loads((out / "config.json").read_text())["model_type"] == "llava"  # transformers.js loads it
    else:  # positions from the mask, attention and its KV cache in one op, norms fused
        assert "position_ids" not in decoder_inputs
        assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= decoder_ops
        assert json.loads((out / "config.json").read_text())["model_type"] == "hf_llava"  # transformers.js refuses
    assert "GroupQueryAttention" in info["decoder"] if optimize == "gqa" else "traced" in info["decoder"]

    # left-padded batch of 2 prompts with one image each (different lengths -> padding)
    batch = _prompts(tiny_processor, images, ["USER: <image>\nWhat is shown in the image? ASSISTANT:",
                                              "USER: <image>\nColor? ASSISTANT:"])
    assert (batch["attention_mask"][:, 0] == 0).any(), "the batch should be left-padded"
    gen = dict(max_new_tokens=10, do_sample=False)
    with torch.no_grad():
        expected = tiny_model.generate(**batch, **gen)
    assert torch.equal(ort_model.generate(**batch, **gen), expected)
    # every step's logits, through the KV cache (catches position / cache errors greedy ties could hide)
    detailed = dict(max_new_tokens=6, min_new_tokens=6, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        ref = tiny_model.generate(**batch, do_sample=False, **detailed)
    got = ort_model.generate(**batch, do_sample=False, **detailed)
    assert torch.equal(got.sequences, ref.sequences) and len(got.logits) == 6
    for step, (a, b) in enumerate(zip(got.logits, ref.logits)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, step=step: f"step {step}: {m}")

    # one prompt with two images
    two = _prompts(tiny_processor, images, ["USER: <image> and <image>\nCompare them. ASSISTANT:"])
    with torch.no_grad():
        expected = tiny_model.generate(**two, **gen)
    assert torch.equal(ort_model.generate(**two, **gen), expected)

    # text only
    text = tiny_processor(text=["USER: Where is the dog? ASSISTANT:"], return_tensors="pt")
    with torch.no_grad():
        expected = tiny_model.generate(**text, **gen)
    assert torch.equal(ort_model.generate(**text, **gen), expected)

    # sampling: seeded, reproducible, same length rules
    torch.manual_seed(0)
    first = ort_model.generate(**batch, do_sample=True, top_k=20, temperature=0.8, max_new_tokens=5)
    torch.manual_seed(0)
    second = ort_model.generate(**batch, do_sample=True, top_k=20, temperature=0.8, max_new_tokens=5)
    assert torch.equal(first, second) and first.shape[1] <= batch["input_ids"].shape[1] + 5


def test_image_token_count_mismatch_is_a_named_error(saved_llava, tmp_path, tiny_processor, images):
    out = export_onnx(saved_llava, tmp_path / "onnx-out", validate=False, show_progress=False)
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out)
    one = _prompts(tiny_processor, images[:1], ["USER: <image>\nHi ASSISTANT:"])
    with pytest.raises(ValueError, match="image tokens"):
        ort_model.generate(one["input_ids"], one["attention_mask"], pixel_values=None, max_new_tokens=2)


@pytest.mark.parametrize("optimize", DECODERS)
def test_decoder_returns_the_logits_asked_for(saved_llava, tmp_path, tiny_processor, images, optimize):
    # generation asks for the last position only: a prefill then neither computes nor copies T x vocab logits
    out = export_onnx(saved_llava, tmp_path / "onnx-out", validate=False, show_progress=False, optimize=optimize)
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out)
    batch = _prompts(tiny_processor, images[:1], ["USER: <image>\nWhat is shown in the image? ASSISTANT:"])
    embeds = ort_model.embed(batch["input_ids"].numpy(), batch["pixel_values"].numpy())
    mask = batch["attention_mask"].numpy()
    length = mask.shape[1]
    if optimize == "gqa":
        def run(keep):
            return ort_model.gqa_step(embeds, mask.sum(-1), ort_model.kv_binding(ort_model._kv_buffers(1, length)),
                                      keep=keep)
    else:
        def run(keep):
            positions = mask.cumsum(-1) - 1
            return ort_model.decode_step(embeds, mask, positions, ort_model._empty_past(1), keep=keep)[0]
    every, last, last_three = run(0), run(1), run(3)
    assert every.shape[:2] == (1, length) and last.shape[:2] == (1, 1) and last_three.shape[:2] == (1, 3)
    assert abs(last[0, 0] - every[0, -1]).max() < 1e-5 and abs(last_three[0] - every[0, -3:]).max() < 1e-5


@pytest.mark.parametrize("optimize", DECODERS)
def test_int4_export_within_tolerance_via_cli(saved_llava, tmp_path, tiny_processor, images, capsys, optimize):
    out = tmp_path / "int4"
    assert main(["export-onnx", str(saved_llava), str(out), "--dtype", "int4", "--optimize", optimize]) == 0
    assert "validation (int4, provider CPUExecutionProvider)" in capsys.readouterr().out
    report = json.loads((out / "onnx" / "export_info.json").read_text())["validation"]
    assert report["relative_diff"] <= report["tolerance"]
    decoder = onnx.load(str(out / "onnx" / "decoder_model_merged_q4.onnx"))
    blocks = [node for node in decoder.graph.node if node.op_type == "MatMulNBits"]
    assert blocks and all(
        {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["block_size"] == 32 for node in blocks)
    assert not [node for node in decoder.graph.node if node.op_type == "MatMul" and node.input[1].endswith("weight")]
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out, dtype="int4")
    batch = _prompts(tiny_processor, images, ["USER: <image>\nWhat? ASSISTANT:", "USER: <image>\nDescribe. ASSISTANT:"])
    assert ort_model.generate(**batch, max_new_tokens=4, min_new_tokens=4).shape[1] == batch["input_ids"].shape[1] + 4


def test_int8_export_within_tolerance_via_cli(saved_llava, tmp_path, tiny_model, tiny_processor, images, capsys):
    out = tmp_path / "int8"
    assert main(["export-onnx", str(saved_llava), str(out), "--dtype", "int8"]) == 0
    assert "validation (int8, provider CPUExecutionProvider)" in capsys.readouterr().out
    for graph in GRAPHS:
        assert (out / "onnx" / f"{graph}_quantized.onnx").is_file()
    report = json.loads((out / "onnx" / "export_info.json").read_text())["validation"]
    assert report["relative_diff"] <= report["tolerance"]
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out, dtype="int8")
    assert "quantized" in ort_model.decoder_session._model_path
    texts = ["USER: <image>\nWhat? ASSISTANT:", "USER: <image>\nDescribe. ASSISTANT:"]
    batch = _prompts(tiny_processor, images, texts)
    ort_logits = ort_model(**batch)
    with torch.no_grad():
        ref = tiny_model(**batch).logits
    real = batch["attention_mask"].bool()
    assert (ort_logits - ref).abs()[real].max() <= report["tolerance"] * max(1.0, ref.abs().max().item())


def _failing_decoder_export(monkeypatch):
    original = torch.onnx.export

    def export(module, *args, **kwargs):
        if type(module).__name__ == "Decoder":
            raise RuntimeError("simulated crash while tracing the decoder")
        return original(module, *args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)


def test_interrupted_export_leaves_nothing_and_keeps_existing_out_dir(saved_llava, tmp_path, monkeypatch):
    parent = tmp_path / "exports"
    fresh = parent / "fresh"
    _failing_decoder_export(monkeypatch)
    with pytest.raises(RuntimeError, match="language model.*simulated crash"):
        export_onnx(saved_llava, fresh, show_progress=False, optimize="none")
    assert not fresh.exists()
    assert list(parent.iterdir()) == []  # no partial folder left behind

    monkeypatch.undo()
    existing = export_onnx(saved_llava, parent / "existing", validate=False, show_progress=False)
    before = {p.relative_to(existing): p.read_bytes() for p in existing.rglob("*") if p.is_file()}
    _failing_decoder_export(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_onnx(saved_llava, existing, show_progress=False, overwrite=True, optimize="none")
    after = {p.relative_to(existing): p.read_bytes() for p in existing.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in parent.iterdir()] == ["existing"]


def test_unsupported_inputs_get_clear_errors(saved_llava, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_onnx(saved_llava, precious, show_progress=False)
    assert (precious / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="must not be MODEL_DIR"):
        export_onnx(saved_llava, saved_llava / "onnx-out", show_progress=False)
    with pytest.raises(ValueError, match="must not be MODEL_DIR"):  # replacing it would delete the model
        export_onnx(saved_llava, saved_llava.parent, show_progress=False, overwrite=True)
    assert (saved_llava / "config.json").is_file()
    with pytest.raises(ValueError, match="dtype='bf16'"):
        export_onnx(saved_llava, tmp_path / "out", dtype="bf16", show_progress=False)


def test_fp16_export_within_tolerance_and_reports_the_provider_that_ran(saved_llava, tmp_path):
    # fp16 is meant for CUDA. Without it, ONNX Runtime falls back to CPU: the report must say so.
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    out = export_onnx(saved_llava, tmp_path / "fp16", dtype="fp16", device="cuda", show_progress=False)
    report = json.loads((out / "onnx" / "export_info.json").read_text())["validation"]
    assert report["relative_diff"] <= report["tolerance"]
    if not cuda:
        assert report["provider"] == "CPUExecutionProvider" and "ran on CPU" in report["warning"]
        with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
            ORTLlavaForConditionalGeneration.from_pretrained(out, provider="CUDAExecutionProvider")
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out, dtype="fp16")
    types = {i.name: i.type for i in ort_model.decoder_session.get_inputs()}
    assert types["inputs_embeds"] == types["past_key_values.0.key"] == "tensor(float16)"
    assert ort_model.generate(torch.tensor([[1, 40, 41]]), max_new_tokens=3).shape[1] <= 6


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs a CUDA device, torch with CUDA and onnxruntime-gpu (CUDAExecutionProvider)",
)
def test_cuda_fp16_export_and_io_binding_generation(saved_llava, tmp_path, tiny_model, tiny_processor, images):
    out = export_onnx(saved_llava, tmp_path / "cuda", dtype="fp16", device="cuda", show_progress=False,
                      optimize="none")
    report = json.loads((out / "onnx" / "export_info.json").read_text())["validation"]
    assert report["provider"] == "CUDAExecutionProvider"
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out, provider="CUDAExecutionProvider", dtype="fp32")
    assert ort_model.use_io_binding
    texts = ["USER: <image>\nWhat? ASSISTANT:", "USER: <image>\nDescribe. ASSISTANT:"]
    batch = _prompts(tiny_processor, images, texts)
    with torch.no_grad():
        expected = tiny_model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(ort_model.generate(**batch, max_new_tokens=6, do_sample=False), expected)


def test_bf16_pixel_values_give_pytorch_values(exported, images):
    model, processor, out = exported
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out)
    batch = _prompts(processor, images[:1], ["USER: <image>\nWhat? ASSISTANT:"])
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    # the same bf16 pixels, upcast exactly, through the fp32 PyTorch model
    reference = dict(batch, pixel_values=batch["pixel_values"].float())
    with torch.no_grad():
        expected_logits = model(**reference).logits
        expected_tokens = model.generate(**reference, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(ort_model(**batch), expected_logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(ort_model.generate(**batch, max_new_tokens=4, do_sample=False), expected_tokens)


def test_validation_rejects_non_finite_logits_as_a_two_line_cli_error(tmp_path, tiny_model, tiny_processor, capsys):
    with torch.no_grad():
        tiny_model.lm_head.weight[5] = float("inf")  # a broken checkpoint: inf/NaN logits
    tiny_model.save_pretrained(tmp_path / "broken")
    tiny_processor.save_pretrained(tmp_path / "broken")
    # ExportValidationError is a ValueError: the CLI reports it like any bad input, without a traceback
    assert main(["export-onnx", str(tmp_path / "broken"), str(tmp_path / "onnx-out")]) == 2
    err = capsys.readouterr().err
    lines = err[err.index("hf-llava export-onnx: error:"):].strip().splitlines()  # after the progress bar
    assert len(lines) <= 2 and "non-finite logits" in lines[0] and "so does PyTorch" in lines[0], lines
    assert not (tmp_path / "onnx-out").exists()


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs a CUDA device, torch with CUDA and onnxruntime-gpu (CUDAExecutionProvider)",
)
@pytest.mark.skipif(GQA_UNAVAILABLE is not None, reason=f"GQA decoder: {GQA_UNAVAILABLE}")
def test_cuda_gqa_fp16_decoder_writes_its_device_buffer_in_place(saved_llava, tmp_path, tiny_model, tiny_processor,
                                                                 images):
    out = export_onnx(saved_llava, tmp_path / "cuda", dtype="fp16", device="cuda", show_progress=False, optimize="gqa")
    report = json.loads((out / "onnx" / "export_info.json").read_text())["validation"]
    assert report["provider"] == "CUDAExecutionProvider" and report["relative_diff"] <= report["tolerance"]
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out, provider="CUDAExecutionProvider")
    assert ort_model.gqa and ort_model.use_io_binding and ort_model.float_dtype == np.float16  # auto: fp16 on CUDA
    with pytest.raises(ValueError, match="fp16 only"):
        ORTLlavaForConditionalGeneration.from_pretrained(out, provider="CUDAExecutionProvider", dtype="fp32")
    batch = _prompts(tiny_processor, images, ["USER: <image>\nWhat? ASSISTANT:", "USER: <image>\nDescribe. ASSISTANT:"])
    detailed = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                    output_logits=True)
    with torch.no_grad():
        ref = tiny_model.generate(**batch, **detailed)
    got = ort_model.generate(**batch, **detailed)
    for a, b in zip(got.logits, ref.logits):  # every step through the in-place cache, within fp16's tolerance
        assert (a - b).abs().max() <= report["tolerance"] * max(1.0, b.abs().max().item())

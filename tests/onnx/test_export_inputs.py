"""`export-onnx` inputs: the processor's source, OUT_DIR reuse, LoRA adapters, missing extras, CLI errors.

Bad inputs fail before any slow work, in at most two lines naming the input and the flag (exit code 2),
and leave nothing behind; a folder is written only when it loads back and runs.
"""

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import hf_llava
from hf_llava.cli import main
from hf_llava.onnx import ORTLlavaForConditionalGeneration, export_onnx


@pytest.fixture()
def bare_model(tmp_path, tiny_model, tiny_processor):
    """`(model_dir, processor_dir)`: the model saved without processor files, the processor on its own."""
    tiny_model.save_pretrained(tmp_path / "bare")
    tiny_processor.save_pretrained(tmp_path / "processor")
    return tmp_path / "bare", tmp_path / "processor"


def _run_cli(argv: list, capsys) -> tuple[int, list]:
    capsys.readouterr()  # only this command's output (transformers 5 draws loading bars on stderr)
    code = main(["export-onnx", *map(str, argv)])
    return code, capsys.readouterr().err.strip().splitlines()


def test_processor_option_completes_a_model_folder_without_one(bare_model, tmp_path, tiny_model, images):
    model_dir, processor_dir = bare_model
    with pytest.raises(ValueError, match=r"has no processor.*processor=DIR"):
        export_onnx(model_dir, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()

    out = export_onnx(model_dir, tmp_path / "out", processor=processor_dir, show_progress=False)
    processor = hf_llava.LlavaProcessor.from_pretrained(out)
    batch = processor(images=images[:1], text=["USER: <image>\nWhat? ASSISTANT:"], return_tensors="pt")
    with torch.no_grad():
        expected = tiny_model.generate(**batch, max_new_tokens=6, do_sample=False)
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out)
    assert torch.equal(ort_model.generate(**batch, max_new_tokens=6, do_sample=False), expected)


@pytest.mark.parametrize("case", ["missing model", "out not empty", "no processor", "adapter", "bad processor",
                                  "merge a full model"])
def test_cli_bad_inputs_fail_in_two_lines_and_write_nothing(case, saved_llava, bare_model, tmp_path, capsys,
                                                             cli_error):
    out = tmp_path / "out"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(saved_llava)}))
    argv, named = {
        "missing model": ([tmp_path / "nope", out], ["MODEL_DIR", str(tmp_path / "nope")]),
        "out not empty": ([saved_llava, out], [str(out), "--overwrite"]),
        "no processor": ([bare_model[0], out], [str(bare_model[0]), "--processor"]),
        "adapter": ([adapter, out], [str(adapter), "--merge-adapter"]),
        "bad processor": ([bare_model[0], out, "--processor", bare_model[0]], [f"--processor {bare_model[0]}"]),
        # --merge-adapter on a folder that is not an adapter would otherwise be ignored without a word
        "merge a full model": ([saved_llava, out, "--merge-adapter"],
                               [str(saved_llava), "adapter_config.json", "--merge-adapter"]),
    }[case]
    if case == "out not empty":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    before = sorted(p.name for p in tmp_path.iterdir())

    code, lines = _run_cli(argv, capsys)
    assert code == 2
    cli_error(lines, "export-onnx")
    for word in named:
        assert word in "\n".join(lines), (word, lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no OUT_DIR, no partial folder
    if case == "out not empty":
        assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_overwrite_replaces_an_earlier_export(saved_llava, tmp_path, capsys):
    out = export_onnx(saved_llava, tmp_path / "out", validate=False, show_progress=False)
    (out / "stale.txt").write_text("from an earlier export")
    code, lines = _run_cli([saved_llava, out, "--no-validate"], capsys)
    assert code == 2 and "--overwrite" in lines[0]
    assert (out / "stale.txt").is_file()
    assert main(["export-onnx", str(saved_llava), str(out), "--no-validate", "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "onnx" / "decoder_model_merged.onnx").is_file()


def test_lora_adapter_exports_merged_with_merge_adapter(saved_llava, tmp_path, tiny_processor, images, capsys):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    torch.manual_seed(1)  # random A and B: the merge changes the outputs
    peft.get_peft_model(hf_llava.LlavaForConditionalGeneration.from_pretrained(saved_llava), config).save_pretrained(
        tmp_path / "adapter"
    )

    assert main(["export-onnx", str(tmp_path / "adapter"), str(tmp_path / "out"), "--merge-adapter"]) == 0
    assert "greedy tokens match" in capsys.readouterr().out  # validated against the merged PyTorch model
    out = tmp_path / "out"
    assert not (out / "adapter_config.json").exists() and (out / "tokenizer.json").is_file()

    base = hf_llava.LlavaForConditionalGeneration.from_pretrained(saved_llava).eval()
    merged = peft.PeftModel.from_pretrained(
        hf_llava.LlavaForConditionalGeneration.from_pretrained(saved_llava), str(tmp_path / "adapter")
    ).merge_and_unload().eval()
    batch = tiny_processor(images=images[:1], text=["USER: <image>\nWhat? ASSISTANT:"], return_tensors="pt")
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(ort_model(**batch), merged(**batch).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged(**batch).logits, base(**batch).logits, atol=1e-3)


def test_int8_summary_says_differing_tokens_are_within_tolerance(tmp_path, tiny_model, tiny_processor, capsys):
    with torch.no_grad():  # every token's logit nearly tied: int8 rounding flips greedy choices
        weight = tiny_model.lm_head.weight
        weight.copy_(weight[:1] + 1e-3 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    tiny_model.save_pretrained(tmp_path / "tied")
    tiny_processor.save_pretrained(tmp_path / "tied")
    export_onnx(tmp_path / "tied", tmp_path / "out", dtype="int8", show_progress=False)
    assert "greedy tokens differ (expected for int8: logits within tolerance)" in capsys.readouterr().out


_BLOCK_ORT = "import sys; sys.modules['onnxruntime'] = None\n"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK_ORT + code], capture_output=True, text=True, timeout=300)


def test_help_works_without_onnxruntime_and_imports_nothing_heavy():
    proc = _python(
        "from hf_llava.cli import main\n"
        "try:\n    main(['export-onnx', '--help'])\nexcept SystemExit as exit:\n    code = exit.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]\n"
        "print('exit', code, 'heavy', heavy)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "--processor DIR" in proc.stdout and "--merge-adapter" in proc.stdout
    assert "exit 0 heavy []" in proc.stdout


def test_missing_onnxruntime_names_the_extra_to_install(saved_llava, tmp_path):
    proc = _python(
        "from hf_llava.cli import main\n"
        f"print('cpu', main(['export-onnx', {str(saved_llava)!r}, {str(tmp_path / 'out')!r}]))\n"
        f"print('cuda', main(['export-onnx', {str(saved_llava)!r}, {str(tmp_path / 'out')!r}, '--device', 'cuda']))\n"
        "from hf_llava._extras import MissingExtraError\n"
        "try:\n    from hf_llava.onnx import ORTLlavaForConditionalGeneration\n"
        "except MissingExtraError as error:\n    print('import:', error)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "cpu 2" in proc.stdout and "cuda 2" in proc.stdout
    errors = proc.stderr.splitlines()
    assert "pip install 'hf-llava[onnx]'" in errors[0] and "pip install 'hf-llava[gpu]'" in errors[1], errors
    assert "import:" in proc.stdout and "pip install 'hf-llava[onnx]'" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_a_quantised_folder_is_refused_with_the_reason(saved_llava, tmp_path, capsys):
    # a 4-bit folder no longer has the full-precision weights an export needs (bitsandbytes layers do not trace)
    import shutil

    quantised = tmp_path / "quantised"
    shutil.copytree(saved_llava, quantised)
    config = json.loads((quantised / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantised / "config.json").write_text(json.dumps(config))
    code, lines = _run_cli([quantised, tmp_path / "out"], capsys)
    assert code == 2 and len(lines) <= 2 and "4-bit bitsandbytes" in lines[0]
    assert "export the full-precision folder" in lines[0] and not (tmp_path / "out").exists()

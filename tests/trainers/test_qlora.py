"""QLoRA: `hf-llava train stage2 --lora --load-in 4bit` trains LoRA adapters on a 4-bit language model (PEFT's
`prepare_model_for_kbit_training`, gradient checkpointing), the projector in float32, the tower frozen; the adapter
saves, reloads, merges into the full-precision base, and resumes."""

import json
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from hf_llava import LlavaForConditionalGeneration, cli, tiny
from hf_llava._loading import bitsandbytes_config, load_llava_model
from hf_llava.trainers import LlavaStage2Config, LlavaStage2Trainer, lm_lora_config
from hf_llava.trainers.recipe import QLORA

from .conftest import fast, write_caption_data

bnb = pytest.importorskip("bitsandbytes", reason="the [quant] extra (bitsandbytes) is not installed")


@pytest.fixture()
def base(tmp_path):
    """A saved tiny LLaVA (LM hidden size 64, a multiple of bitsandbytes' 64-wide 4-bit blocks)."""
    model, processor = tiny.build_llava(seed=0)
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def _train(base, output, data, images, *extra):
    return cli.main(["train", "stage2", "--model", str(base), "--output", str(output), "--data", str(data),
                     "--images", str(images), "--max-steps", "2", "--batch-size", "4", "--logging-steps", "1",
                     "--lr", "1e-3", "--lora", "--load-in", "4bit", *extra])


def test_the_trainer_prepares_a_4bit_model_as_qlora(tmp_path, base, caption_data):
    from transformers import AutoProcessor

    model = LlavaForConditionalGeneration.from_pretrained(base, quantization_config=bitsandbytes_config(4))
    trainer = LlavaStage2Trainer(model=model, args=fast(LlavaStage2Config, tmp_path, gradient_checkpointing=True),
                                 train_dataset=caption_data, processing_class=AutoProcessor.from_pretrained(base),
                                 peft_config=lm_lora_config(r=4, lora_alpha=8))
    trainable = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "multi_modal_projector.modules_to_save" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())  # the projector and the adapters
    assert not any("vision_tower" in n for n in trainable)
    assert isinstance(trainer.model.base_model.model.model.language_model.layers[0].self_attn.q_proj.base_layer,
                      bnb.nn.Linear4bit)
    assert trainer.model.base_model.model.is_gradient_checkpointing
    before = {n: p.detach().clone() for n, p in trainable.items()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed) and any("multi_modal_projector" in n for n in changed)


def test_a_4bit_model_without_lora_is_refused(tmp_path, base, caption_data):
    from transformers import AutoProcessor

    model = LlavaForConditionalGeneration.from_pretrained(base, quantization_config=bitsandbytes_config(4))
    with pytest.raises(ValueError, match="QLoRA"):
        LlavaStage2Trainer(model=model, args=fast(LlavaStage2Config, tmp_path), train_dataset=caption_data,
                           processing_class=AutoProcessor.from_pretrained(base))


def test_qlora_command_saves_merges_in_full_precision_and_reloads(tmp_path, base, caplog):
    data, images = write_caption_data(tmp_path)
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        assert _train(base, out, data, images, "--merge-lora", "--lora-r", "4", "--lora-alpha", "8") == 0
    assert "merging the adapter into" in caplog.text and "loaded in full precision" in caplog.text
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (4, 8) and adapter["base_model_name_or_path"] == str(base)
    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # B starts at zero: it trained
    assert not any("vision_tower" in k for k in weights)
    # the merged folder: the fp32 base with the adapter merged, as PEFT merges it in memory
    merged = LlavaForConditionalGeneration.from_pretrained(out / "merged")
    assert merged.dtype == torch.float32 and "quantization_config" not in json.loads(
        (out / "merged" / "config.json").read_text())
    in_memory = PeftModel.from_pretrained(LlavaForConditionalGeneration.from_pretrained(base), str(out))
    in_memory = in_memory.merge_and_unload().eval()
    inputs = tiny.build_processor(tiny.build_tokenizer(), merged.config)(
        images=tiny.demo_image(64, seed=2), text=["USER: <image>\nWhat is it? ASSISTANT:"], return_tensors="pt")
    with torch.no_grad():
        logits = merged.eval()(**inputs).logits
        assert torch.allclose(logits, in_memory(**inputs).logits, atol=1e-5)
        assert torch.allclose(logits, load_llava_model(out, merge_adapter=True).eval()(**inputs).logits, atol=1e-5)


def test_qlora_uses_the_recipes_rank_and_alpha_and_resumes(tmp_path, base):
    data, images = write_caption_data(tmp_path)
    once, twice = tmp_path / "once", tmp_path / "twice"
    assert _train(base, once, data, images, "--save-steps", "1") == 0
    adapter = json.loads((once / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (QLORA["r"], QLORA["lora_alpha"])
    # an interrupted run (its last checkpoint gone) resumes from checkpoint-1 and ends where the whole run ended
    assert _train(base, twice, data, images, "--save-steps", "1") == 0
    for name in ("checkpoint-2", "adapter_model.safetensors"):
        path = twice / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    assert _train(base, twice, data, images, "--save-steps", "1", "--resume", "last") == 0
    state = json.loads((twice / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    resumed, whole = load_file(twice / "adapter_model.safetensors"), load_file(once / "adapter_model.safetensors")
    assert resumed.keys() == whole.keys()
    for key in whole:
        assert torch.allclose(resumed[key], whole[key], atol=1e-6), key


@pytest.mark.parametrize("flags, says", [
    (["--load-in", "4bit"], "add --lora"),
    (["--lora", "--bnb-double-quant"], "add --load-in 4bit"),
    (["--lora", "--load-in", "8bit", "--bnb-quant-type", "fp4"], "8-bit loading takes neither"),
])
def test_bad_quantisation_flags_are_refused_in_one_line(tmp_path, base, capsys, cli_error, flags, says):
    data, images = write_caption_data(tmp_path)
    code = cli.main(["train", "stage2", "--model", str(base), "--output", str(tmp_path / "out"), "--data", str(data),
                     "--images", str(images), *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and says in lines[0] and not (tmp_path / "out").exists()
    cli_error(lines, "train")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a QLoRA step in bfloat16)")


@needs_cuda
def test_cuda_one_qlora_step(tmp_path, base, caption_data):
    from transformers import AutoProcessor

    model = LlavaForConditionalGeneration.from_pretrained(base, quantization_config=bitsandbytes_config(4))
    args = fast(LlavaStage2Config, tmp_path, max_steps=1, gradient_checkpointing=True)
    assert args.bf16  # CUDA with bf16: mixed precision on, 4-bit compute in bf16
    trainer = LlavaStage2Trainer(model=model, args=args, train_dataset=caption_data,
                                 processing_class=AutoProcessor.from_pretrained(base),
                                 peft_config=lm_lora_config(r=4, lora_alpha=8))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if n in before)
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))

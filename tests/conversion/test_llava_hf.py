"""hf-llava <-> llava-hf: stock transformers loads the export, tensors survive bit for bit, keys are accounted."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import hf_llava
from hf_llava import tiny
from hf_llava.conversion import ConversionError, convert_hf_llava_to_llava_hf, convert_llava_hf_to_hf_llava


def test_export_loads_in_transformers_and_matches(saved_llava, tiny_model, tiny_processor, images, tmp_path, conv):
    out = convert_hf_llava_to_llava_hf(saved_llava, tmp_path / "llava-hf", progress=False)
    assert not list(out.glob("*.py"))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava" and "auto_map" not in config and "projector_type" not in config
    # transformers 4.57's on-disk llava names, whichever line converted: what 4.57, 5.x, vLLM and SGLang read
    assert all(key.startswith(conv.LLAVA_ON_DISK) for key in load_file(out / "model.safetensors"))
    model = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = transformers.AutoProcessor.from_pretrained(out)
    assert type(processor) is transformers.LlavaProcessor
    assert processor.chat_template == tiny_processor.chat_template
    prompt = tiny_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}], add_generation_prompt=True
    )
    ours, theirs = tiny_processor(images=images[:1], text=prompt), processor(images=images[:1], text=prompt)
    assert ours["input_ids"] == theirs["input_ids"]
    assert (ours["pixel_values"][0] == theirs["pixel_values"][0]).all()
    conv.assert_same_outputs(model, tiny_model, tiny_processor, images)


def test_round_trip_is_bit_identical(saved_llava, tiny_model, tmp_path, conv):
    hf = convert_hf_llava_to_llava_hf(saved_llava, tmp_path / "hf", max_shard_size="40KB", progress=False)
    assert (hf / "model.safetensors.index.json").is_file()  # sharded
    back = convert_llava_hf_to_hf_llava(hf, tmp_path / "back", progress=False)
    assert all(key.startswith(conv.LLAVA_ON_DISK) for key in load_file(back / "model.safetensors"))
    model = hf_llava.LlavaForConditionalGeneration.from_pretrained(back)
    ref = tiny_model.state_dict()
    assert set(model.state_dict()) == set(ref)
    assert all(torch.equal(t, ref[name]) for name, t in model.state_dict().items())
    before, after = (json.loads((p / "config.json").read_text()) for p in (saved_llava, back))
    assert before == after
    for name in ("processor_config.json", "preprocessor_config.json", "chat_template.jinja", "tokenizer.json"):
        assert (saved_llava / name).read_text() == (back / name).read_text(), name


@pytest.mark.parametrize("direction", ["hf-llava", "llava-hf"])
def test_folders_are_written_in_the_layout_both_transformers_lines_read(saved_llava, tmp_path, direction):
    """Whichever line writes it (4.57 or 5.x), a folder loads in the other: 4.57's file layout, which 5.x reads."""
    folder = saved_llava
    if direction == "llava-hf":
        folder = convert_hf_llava_to_llava_hf(saved_llava, tmp_path / "hf", progress=False)
    image_processor = json.loads((folder / "preprocessor_config.json").read_text())  # 4.57 reads it from here only
    assert image_processor["image_processor_type"] == "LlavaImageProcessor"
    assert "image_processor" not in json.loads((folder / "processor_config.json").read_text())
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    # 5.x's `TokenizersBackend` is unknown to 4.57
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["additional_special_tokens"] == ["<image>"]
    assert not {"backend", "is_local", "local_files_only"} & set(tokenizer_config)  # load options, not settings
    assert not isinstance(tokenizer_config.get("extra_special_tokens"), list)  # 4.57 reads a dict here
    text_config = json.loads((folder / "config.json").read_text())["text_config"]
    assert text_config["rope_theta"] == 10000.0  # 4.57 does not read 5.x's `rope_parameters`
    processor = transformers.AutoProcessor.from_pretrained(folder)
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<image>") == 512 and "<image>" in tokenizer.all_special_tokens


def _transformers_llava(tmp_path, new_layout: bool):
    """A llava-hf folder written by stock transformers (CLIP crop processor), optionally with in-memory key names."""
    tokenizer = tiny.build_tokenizer()
    ours = tiny.build_config(tokenizer)
    ours_only = ("projector_type", "image_aspect_ratio", "model_type")
    fields = {k: v for k, v in ours.to_dict().items() if k not in ours_only}
    torch.manual_seed(1)
    model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**fields)).eval()
    ip = tiny.build_processor(tokenizer, ours, pad=False).image_processor
    processor = transformers.LlavaProcessor(
        image_processor=ip, tokenizer=tokenizer, patch_size=6, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=hf_llava.CHAT_TEMPLATES["llama_2"],
    )
    path = tmp_path / "transformers-llava"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if new_layout:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")
    return path, model


@pytest.mark.parametrize("new_layout", [False, True])
def test_llava_hf_to_hf_llava_matches_transformers(tmp_path, images, new_layout, conv):
    src, reference = _transformers_llava(tmp_path, new_layout)
    out = convert_llava_hf_to_hf_llava(src, tmp_path / "ours", progress=False)
    model = transformers.AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = transformers.AutoProcessor.from_pretrained(out)
    assert isinstance(model, hf_llava.LlavaForConditionalGeneration) and isinstance(processor, hf_llava.LlavaProcessor)
    assert model.config.image_aspect_ratio == "square"  # CLIP's crop, no padding
    assert processor.chat_template == hf_llava.CHAT_TEMPLATES["llama_2"]
    conv.assert_same_outputs(model, reference, processor, images)


def test_unknown_key_is_named_and_nothing_is_written(saved_llava, tmp_path):
    state = load_file(saved_llava / "model.safetensors")
    state["multi_modal_projector.linear_3.weight"] = torch.zeros(2, 2)
    save_file(state, saved_llava / "model.safetensors")
    with pytest.raises(ConversionError, match=r"multi_modal_projector\.linear_3\.weight"):
        convert_hf_llava_to_llava_hf(saved_llava, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == [saved_llava.name]  # no temporary folder left


def test_missing_key_is_named(saved_llava, tmp_path):
    state = load_file(saved_llava / "model.safetensors")
    del state["language_model.model.norm.weight"]
    save_file(state, saved_llava / "model.safetensors")
    with pytest.raises(ConversionError, match=r"nothing fills: model\.language_model\.norm\.weight"):
        convert_hf_llava_to_llava_hf(saved_llava, tmp_path / "out", progress=False)


def test_linear_projector_has_no_llava_hf_equivalent(tmp_path, tokenizer):
    config = tiny.build_config(tokenizer, projector_type="linear")
    path = tmp_path / "linear"
    hf_llava.LlavaForConditionalGeneration(config).save_pretrained(path)
    with pytest.raises(ConversionError, match="projector_type='linear'.*no llava-hf equivalent"):
        convert_hf_llava_to_llava_hf(path, tmp_path / "out", progress=False)


def test_tied_embeddings_checkpoint_that_also_stores_lm_head(tokenizer, tiny_processor, images, tmp_path, conv):
    """Tied LMs (e.g. small Qwen2) whose checkpoint writer kept `lm_head` still convert; the head stays tied."""
    config = tiny.build_config(tokenizer, text_model_type="qwen2")
    settings = {**config.text_config.to_dict(), "tie_word_embeddings": True}
    hf_config = transformers.LlavaConfig(vision_config=config.vision_config.to_dict(), text_config=settings,
                                         image_token_index=config.image_token_index,
                                         image_seq_length=config.image_seq_length)
    torch.manual_seed(0)
    source = transformers.LlavaForConditionalGeneration(hf_config).eval()
    source.save_pretrained(tmp_path / "tied")
    state = load_file(tmp_path / "tied" / "model.safetensors")
    assert "language_model.lm_head.weight" not in state  # transformers drops it; some writers keep it
    state["language_model.lm_head.weight"] = state["language_model.model.embed_tokens.weight"].clone()
    save_file(state, tmp_path / "tied" / "model.safetensors", metadata={"format": "pt"})
    tiny_processor.save_pretrained(tmp_path / "tied")
    out = convert_llava_hf_to_hf_llava(tmp_path / "tied", tmp_path / "ours", progress=False)
    model = hf_llava.LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    conv.assert_same_outputs(model, source, tiny_processor, images)

"""hf-llava <-> llava-hf: stock transformers loads the export, tensors survive bit for bit, keys are accounted."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import hf_llava
from hf_llava import tiny
from hf_llava.cli import main
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


@pytest.mark.parametrize("saved, reference, model_type", [("saved_llava", "tiny_model", "llava"),
                                                           ("saved_next", "next_model", "llava_next")])
def test_round_trip_is_bit_identical(request, saved, reference, model_type, tmp_path, conv):
    saved, reference = request.getfixturevalue(saved), request.getfixturevalue(reference)
    hf = convert_hf_llava_to_llava_hf(saved, tmp_path / "hf", max_shard_size="40KB", progress=False)
    assert (hf / "model.safetensors.index.json").is_file()  # sharded
    assert json.loads((hf / "config.json").read_text())["model_type"] == model_type
    back = convert_llava_hf_to_hf_llava(hf, tmp_path / "back", progress=False)
    assert all(key.startswith(conv.LLAVA_ON_DISK) for key in load_file(back / "model.safetensors"))
    model = hf_llava.LlavaForConditionalGeneration.from_pretrained(back)
    ref = reference.state_dict()
    assert set(model.state_dict()) == set(ref)
    assert all(torch.equal(t, ref[name]) for name, t in model.state_dict().items())
    before, after = (json.loads((p / "config.json").read_text()) for p in (saved, back))
    assert before == after
    for name in ("processor_config.json", "preprocessor_config.json", "chat_template.jinja", "tokenizer.json"):
        assert (saved / name).read_text() == (back / name).read_text(), name


def test_next_export_loads_in_transformers_llava_next_and_matches(saved_next, next_model, next_processor,
                                                                  next_images, tmp_path, conv):
    out = convert_hf_llava_to_llava_hf(saved_next, tmp_path / "llava-next", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_next" and config["architectures"] == ["LlavaNextForConditionalGeneration"]
    assert config["image_grid_pinpoints"] == next_model.config.image_grid_pinpoints
    assert not {"auto_map", "projector_type", "image_aspect_ratio", "patch_merge_type"} & set(config)
    assert "image_newline" in load_file(out / "model.safetensors")  # llava_next's saved name
    model = transformers.LlavaNextForConditionalGeneration.from_pretrained(out).eval()
    processor = transformers.AutoProcessor.from_pretrained(out)
    assert type(processor) is transformers.LlavaNextProcessor
    assert processor.image_processor.image_grid_pinpoints == next_model.config.image_grid_pinpoints
    assert processor.chat_template == next_processor.chat_template
    prompts = [next_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}], add_generation_prompt=True
    )] * len(next_images)
    ours = next_processor(images=next_images, text=prompts, padding=True, return_tensors="pt")
    theirs = processor(images=next_images, text=prompts, padding=True, return_tensors="pt")
    assert set(ours) == set(theirs) and all(torch.equal(ours[name], theirs[name]) for name in theirs)
    for image in next_images[:2]:  # a wide and a tall grid
        conv.assert_same_outputs(model, next_model, next_processor, [image])


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


def _transformers_llava(tmp_path, new_layout: bool, model_type: str = "llava"):
    """A llava-hf folder written by stock transformers (llava: CLIP crop processor; llava_next: AnyRes tiles of
    16px, the released grids), optionally with in-memory key names."""
    tokenizer = tiny.build_tokenizer()
    next_kwargs = dict(image_size=16, patch_size=4, image_aspect_ratio="anyres")
    ours = tiny.build_config(tokenizer, **(next_kwargs if model_type == "llava_next" else {}))
    ours_only = ("projector_type", "image_aspect_ratio", "patch_merge_type", "model_type")
    fields = {k: v for k, v in ours.to_dict().items() if k not in ours_only}
    prefix = "LlavaNext" if model_type == "llava_next" else "Llava"
    torch.manual_seed(1)
    config = getattr(transformers, prefix + "Config")(**fields)
    model = getattr(transformers, prefix + "ForConditionalGeneration")(config).eval()
    ip = tiny.build_processor(tokenizer, ours, pad=False).image_processor
    processor = getattr(transformers, prefix + "Processor")(
        image_processor=ip, tokenizer=tokenizer, patch_size=ours.vision_config.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=hf_llava.CHAT_TEMPLATES["llama_2"],
    )
    path = tmp_path / "transformers-llava"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if new_layout:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")
    return path, model


@pytest.mark.parametrize("model_type, new_layout", [("llava", False), ("llava", True), ("llava_next", False),
                                                     ("llava_next", True)])
def test_llava_hf_to_hf_llava_matches_transformers(tmp_path, images, next_images, model_type, new_layout, conv):
    src, reference = _transformers_llava(tmp_path, new_layout, model_type)
    out = convert_llava_hf_to_hf_llava(src, tmp_path / "ours", progress=False)
    model = transformers.AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = transformers.AutoProcessor.from_pretrained(out)
    assert isinstance(model, hf_llava.LlavaForConditionalGeneration) and isinstance(processor, hf_llava.LlavaProcessor)
    assert processor.chat_template == hf_llava.CHAT_TEMPLATES["llama_2"]
    if model_type == "llava":
        assert model.config.image_aspect_ratio == "square"  # CLIP's crop, no padding
        conv.assert_same_outputs(model, reference, processor, images)
        return
    assert model.config.image_aspect_ratio == "anyres" and model.config.patch_merge_type == "spatial_unpad"
    assert model.config.image_grid_pinpoints == reference.config.image_grid_pinpoints
    assert processor.anyres and processor.image_processor.image_grid_pinpoints == reference.config.image_grid_pinpoints
    for image in next_images[:2]:  # a wide and a tall grid
        conv.assert_same_outputs(model, reference, processor, [image])


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


def test_only_spatial_unpad_has_a_llava_next_equivalent(tmp_path, next_config, next_processor, cli_error, capsys):
    config = hf_llava.LlavaConfig.from_dict({**next_config.to_dict(), "patch_merge_type": "spatial"})
    path = tmp_path / "spatial"
    hf_llava.LlavaForConditionalGeneration(config).save_pretrained(path)
    next_processor.save_pretrained(path)
    with pytest.raises(ConversionError, match="patch_merge_type='spatial'.*only as 'spatial_unpad'"):
        convert_hf_llava_to_llava_hf(path, tmp_path / "out", progress=False)
    capsys.readouterr()  # the saving above may have drawn a progress bar
    assert main(["convert", "--from", "hf-llava", "--to", "llava-hf", str(path), str(tmp_path / "out")]) == 2
    cli_error(capsys.readouterr().err.strip().splitlines(), "convert")
    assert not (tmp_path / "out").exists()


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

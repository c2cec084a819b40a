"""Original LLaVA checkpoints (1.5 and NeXT; full, stage-1 projector, LoRA) -> hf-llava, compared with the model they
came from."""

import pytest
import safetensors.torch
import torch
import transformers

import hf_llava
from hf_llava import tiny
from hf_llava._compat import pil_image_processor
from hf_llava.conversion import ConversionError, convert_original_to_hf_llava


def _check(out, tiny_model, images, conv):
    model = transformers.AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = transformers.AutoProcessor.from_pretrained(out)
    assert processor.image_token_id == conv.IMAGE_ID == model.config.image_token_index
    assert processor.chat_template == hf_llava.CHAT_TEMPLATES["vicuna_v1"]
    assert type(processor.image_processor) is pil_image_processor("LlavaImageProcessor")
    assert processor.image_processor.do_pad
    conv.assert_same_outputs(model, conv.with_mean_rows(tiny_model), processor, images)
    return model, processor


def test_full_checkpoint_matches_source_model(original_dir, clip_dir, tiny_model, images, tmp_path, conv):
    out = convert_original_to_hf_llava(
        original_dir, tmp_path / "out", vision_tower=clip_dir, max_shard_size="60KB", progress=False
    )
    assert (out / "model.safetensors.index.json").is_file()
    model, processor = _check(out, tiny_model, images, conv)
    assert model.config.vision_feature_layer == -2 and model.config.projector_type == "mlp2x_gelu"
    # The same token ids as the original's tokenizer_image_token, with the image run at its -200 sentinel.
    original_tokenizer = transformers.AutoTokenizer.from_pretrained(original_dir)
    prompt = "USER: <image>\nWhat is shown? ASSISTANT:"
    chunks = [original_tokenizer(c).input_ids for c in prompt.split("<image>")]
    sentinel_ids = chunks[0] + [-200] + chunks[1][1:]  # later chunks lose their BOS
    ids = processor(images=images[:1], text=prompt).input_ids[0]
    collapsed = [i for j, i in enumerate(ids) if i != conv.IMAGE_ID or ids[j - 1] != conv.IMAGE_ID]
    assert [-200 if i == conv.IMAGE_ID else i for i in collapsed] == sentinel_ids


def test_saved_vision_tower_is_used(original_dir, clip_dir, tiny_model, images, tmp_path, conv):
    state = conv.original_state(tiny_model)
    tower = {k: v for k, v in state.items() if k.startswith("model.vision_tower.")}
    torch.save(tower, original_dir / "pytorch_model-00002-of-00002.bin")  # the tower replaces shard 2...
    index = original_dir / "pytorch_model.bin.index.json"
    rest = {k: v for k, v in state.items() if not k.startswith("model.vision_tower.")}
    torch.save(rest, original_dir / "pytorch_model-00001-of-00002.bin")
    weight_map = {k: "pytorch_model-00001-of-00002.bin" for k in rest}
    weight_map.update({k: "pytorch_model-00002-of-00002.bin" for k in tower})
    conv.write_json(index, {"weight_map": weight_map})
    # The folder's weights must not be read when the checkpoint has the tower (config + processor only).
    safetensors.torch.save_file({"vision_model.post_layernorm.weight": torch.zeros(1)}, clip_dir / "model.safetensors")
    out = convert_original_to_hf_llava(original_dir, tmp_path / "out", vision_tower=clip_dir, progress=False)
    _check(out, tiny_model, images, conv)


def test_stage1_projector_on_model_base(tmp_path, tiny_model, clip_dir, llama_base_dir, images, conv):
    src = tmp_path / "stage1"
    src.mkdir()
    projector = {k: v for k, v in conv.original_state(tiny_model).items() if k.startswith("model.mm_projector.")}
    torch.save(projector, src / "mm_projector.bin")
    conv.write_json(src / "config.json", conv.original_config(tiny_model))
    out = convert_original_to_hf_llava(
        src, tmp_path / "out", vision_tower=clip_dir, model_base=llama_base_dir, progress=False
    )
    _check(out, tiny_model, images, conv)


def test_lora_merged_onto_model_base(tmp_path, tiny_model, clip_dir, llama_base_dir, images, conv):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    lm = transformers.AutoModelForCausalLM.from_pretrained(llama_base_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(lm, lora)
    src = tmp_path / "lora"
    # adapter_config.json + adapter_model.safetensors, keys base_model.model.model.layers.*: the original layout
    peft_model.save_pretrained(src)
    projector = {k: v for k, v in conv.original_state(tiny_model).items() if k.startswith("model.mm_projector.")}
    torch.save({"base_model.model." + k: v for k, v in projector.items()}, src / "non_lora_trainables.bin")
    conv.write_json(src / "config.json", conv.original_config(tiny_model))
    q = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    merged_q = q.base_layer.weight + (q.lora_B["default"].weight @ q.lora_A["default"].weight) * (8 / 4)
    out = convert_original_to_hf_llava(
        src, tmp_path / "out", vision_tower=clip_dir, model_base=llama_base_dir, progress=False
    )

    model = transformers.AutoModelForImageTextToText.from_pretrained(out).eval()
    torch.testing.assert_close(model.model.language_model.layers[0].self_attn.q_proj.weight, merged_q)
    reference = conv.with_mean_rows(tiny_model)
    merged = peft_model.merge_and_unload()
    embed = {"embed_tokens.weight": reference.model.language_model.embed_tokens.weight}  # with the <image> row
    reference.model.language_model.load_state_dict(merged.model.state_dict() | embed)
    conv.assert_same_outputs(model, reference, transformers.AutoProcessor.from_pretrained(out), images)


# (patch_merge_type, grid as [height, width] or None for the released grids, grid written as the Python literal the
# original also reads). The 1x3 / 2x2 grid has no mirror image: a pair read the wrong way round picks another grid.
NEXT_CASES = [("spatial_unpad", None, False), ("spatial", [[16, 48], [32, 32]], False),
              ("flat", [[16, 48], [32, 32]], True)]


@pytest.mark.parametrize("merge, grid, literal", NEXT_CASES)
def test_next_checkpoint_matches_source_model(tmp_path, tokenizer, next_config, original_tokenizer_dir, next_clip_dir,
                                              next_images, merge, grid, literal, conv):
    fields = {"patch_merge_type": merge, **({"image_grid_pinpoints": grid} if grid else {})}
    config = hf_llava.LlavaConfig.from_dict({**next_config.to_dict(), **fields})
    torch.manual_seed(0)
    source = hf_llava.LlavaForConditionalGeneration(config).eval()
    mm = {}
    if literal:  # "[(48, 16), (32, 32)]": (width, height) tuples
        mm["image_grid_pinpoints"] = str([(width, height) for height, width in config.image_grid_pinpoints])
    src = conv.write_original_next(tmp_path / "llava-v1.6", source, original_tokenizer_dir, **mm)
    out = convert_original_to_hf_llava(src, tmp_path / "out", vision_tower=next_clip_dir, progress=False)

    model = transformers.AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = transformers.AutoProcessor.from_pretrained(out)
    assert model.config.image_aspect_ratio == "anyres" and model.config.patch_merge_type == merge
    assert model.config.image_grid_pinpoints == config.image_grid_pinpoints  # the checkpoint's grid, [height, width]
    assert hasattr(model.model, "image_newline") == (merge == "spatial_unpad")
    assert type(processor.image_processor) is pil_image_processor("LlavaNextImageProcessor")
    assert processor.image_processor.image_grid_pinpoints == config.image_grid_pinpoints
    assert processor.patch_merge_type == merge and processor.image_token_id == conv.IMAGE_ID
    # the tiles go through the tower's resize, crop and normalisation, as the tiny NeXT processor's
    expected = tiny.build_processor(tokenizer, config).image_processor(next_images, return_tensors="pt")
    assert torch.equal(processor.image_processor(next_images, return_tensors="pt")["pixel_values"],
                       expected["pixel_values"])
    for image in next_images[:2]:  # a wide and a tall grid
        conv.assert_same_outputs(model, conv.with_mean_rows(source), processor, [image])


@pytest.mark.parametrize("mm, message", [
    ({"image_grid_pinpoints": "(1x1),...,(3x3)"}, r"tile-range form .* \[width, height\] pairs"),
    ({"image_grid_pinpoints": None}, r"image_grid_pinpoints=None; expected a list of \[width, height\] pairs"),
    ({"image_grid_pinpoints": "336x672"}, r"image_grid_pinpoints='336x672'; expected a list of \[width, height\]"),
    ({"mm_patch_merge_type": "spatial_unpad_max"}, "mm_patch_merge_type='spatial_unpad_max'; expected one of"),
    ({"image_aspect_ratio": "anyres_max_9"}, "image_aspect_ratio='anyres_max_9'; expected 'pad', 'square' or"),
    ({"image_aspect_ratio": "pad"}, "mm_patch_merge_type='spatial_unpad' with image_aspect_ratio='pad'"),
])
def test_next_settings_hf_llava_cannot_read_are_refused(tmp_path, next_model, original_tokenizer_dir, next_clip_dir,
                                                        mm, message, conv):
    src = conv.write_original_next(tmp_path / "llava-v1.6", next_model, original_tokenizer_dir, **mm)
    with pytest.raises(ConversionError, match=message):
        convert_original_to_hf_llava(src, tmp_path / "out", vision_tower=next_clip_dir, progress=False)
    assert not (tmp_path / "out").exists()


def test_unknown_key_is_named(original_dir, clip_dir, tmp_path):
    state = torch.load(original_dir / "pytorch_model-00001-of-00002.bin", weights_only=True)
    state["model.vision_resampler.weight"] = torch.zeros(2)
    torch.save(state, original_dir / "pytorch_model-00001-of-00002.bin")
    with pytest.raises(ConversionError, match=r"model\.vision_resampler\.weight \(in pytorch_model-00001"):
        convert_original_to_hf_llava(original_dir, tmp_path / "out", vision_tower=clip_dir, progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_projector_is_named(original_dir, clip_dir, tiny_model, tmp_path, conv):
    for shard in original_dir.glob("pytorch_model-*.bin"):
        state = torch.load(shard, weights_only=True)
        torch.save({k: v for k, v in state.items() if "mm_projector" not in k}, shard)
    config = conv.original_config(tiny_model)
    del config["mm_projector_type"]
    conv.write_json(original_dir / "config.json", config)
    with pytest.raises(ConversionError, match=r"no projector weights \(model\.mm_projector\.\*\)"):
        convert_original_to_hf_llava(original_dir, tmp_path / "out", vision_tower=clip_dir, progress=False)


def test_im_start_end_is_refused(original_dir, clip_dir, tiny_model, tmp_path, conv):
    conv.write_json(original_dir / "config.json", conv.original_config(tiny_model, mm_use_im_start_end=True))
    with pytest.raises(ConversionError, match="mm_use_im_start_end=True.*LLaVA v1"):
        convert_original_to_hf_llava(original_dir, tmp_path / "out", vision_tower=clip_dir, progress=False)


def test_interrupted_conversion_leaves_no_dst_and_keeps_existing(original_dir, clip_dir, tmp_path, monkeypatch):
    real_save = safetensors.torch.save_file
    calls = []

    def failing_save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="No space"):
        convert_original_to_hf_llava(
            original_dir, tmp_path / "out", vision_tower=clip_dir, max_shard_size="60KB", progress=False
        )
    assert not (tmp_path / "out").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        convert_original_to_hf_llava(original_dir, existing, vision_tower=clip_dir, progress=False)
    calls.clear()
    with pytest.raises(OSError):
        convert_original_to_hf_llava(
            original_dir, existing, vision_tower=clip_dir, max_shard_size="60KB", overwrite=True, progress=False
        )
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary folders left


@pytest.mark.parametrize(
    "files, message",
    [
        (None, "does not exist"),
        ([], r"no config\.json; expected an original LLaVA folder"),
        (["mm_projector.bin"], "is a projector checkpoint: pass model_base"),
        (["adapter_config.json", "mm_projector.bin"], "is a lora checkpoint: pass model_base"),
    ],
)
def test_checkpoint_kind_is_told_by_its_files(tmp_path, files, message):
    src = tmp_path / "src"
    if files is not None:
        src.mkdir()
        for name in files:
            (src / name).write_text("{}")
    with pytest.raises(ConversionError, match=message):
        convert_original_to_hf_llava(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_bare_projector_file_needs_model_base(tmp_path):
    (tmp_path / "mm_projector.bin").write_bytes(b"")
    with pytest.raises(ConversionError, match="is a projector checkpoint: pass model_base"):
        convert_original_to_hf_llava(tmp_path / "mm_projector.bin", tmp_path / "out", progress=False)

"""LlavaDataCollator: labels equal the original LLaVA preprocess_plain / preprocess_v1, images, end of turn,
truncation, bad images, AnyRes (LLaVA-NeXT) batches."""

import logging

import pytest
import torch
from PIL import Image

from hf_llava import tiny
from hf_llava.data import IGNORE_INDEX, LlavaDataCollator, LlavaMaskError, load_llava_dataset

from .conftest import sample, write_llava

N_IMAGE = 25  # tiny config: 30px images, 6px patches, CLS dropped


def _row(i=0, turns=1, image=True, answer="The cat 12.", folder=None):
    rec = sample(i, image=image, turns=turns, answer=answer)
    return {"id": rec["id"], "conversations": rec["conversations"],
            "image": str(folder / rec["image"]) if image else None}


def original_v1_labels(tokenizer, text):
    """A restatement of LLaVA's `preprocess_v1` length arithmetic (single `<image>` token), for comparison."""
    ids = tokenizer(text).input_ids
    target = list(ids)
    sep = " ASSISTANT: "
    cur = 1
    target[:cur] = [IGNORE_INDEX] * cur
    for rou in text.split("</s>"):
        parts = rou.split(sep)
        if rou == "" or len(parts) != 2:
            break
        round_len = len(tokenizer(rou).input_ids)  # BOS counted in place of the missing "</s>"
        instruction_len = len(tokenizer(parts[0] + sep).input_ids) - 2  # minus BOS and the trailing-space token
        target[cur:cur + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur += round_len
    target[cur:] = [IGNORE_INDEX] * (len(target) - cur)
    assert cur == len(ids), "tokenization mismatch (the original would zero the whole sample)"
    return target


def _expand(values, ids, image_id, fill=IGNORE_INDEX, n=N_IMAGE):
    """Repeat the single image position n times (the original expands inside the model)."""
    out = []
    for value, token in zip(values, ids):
        out += [fill] * n if token == image_id else [value]
    return out


@pytest.fixture()
def folder(llava_files):
    return llava_files[1]


def test_plain_labels_match_preprocess_plain(styled, folder):
    tokenizer, tiny_processor = styled
    collator = LlavaDataCollator(tiny_processor, template="plain")
    batch = collator([_row(0, folder=folder)])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    caption = tokenizer("The cat 12.\n", add_special_tokens=False).input_ids
    # derived by hand: <s>, 25 image tokens (masked), then the caption and "\n" (trained)
    assert ids == [tokenizer.bos_token_id] + [tiny_processor.image_token_id] * N_IMAGE + caption
    assert labels == [IGNORE_INDEX] * (1 + N_IMAGE) + caption
    assert batch["pixel_values"].shape == (1, 3, 30, 30)


@pytest.mark.parametrize("turns", [1, 3])
def test_vicuna_v1_labels_match_preprocess_v1(styled, folder, turns):
    tokenizer, tiny_processor = styled
    collator = LlavaDataCollator(tiny_processor, template="vicuna_v1", image_position="before")
    row = _row(0, turns=turns, folder=folder)
    batch = collator([row])
    text, _ = collator.render_with_spans(row)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    reference_ids = tokenizer(text).input_ids
    image_id = tiny_processor.image_token_id
    assert ids == _expand(reference_ids, reference_ids, image_id, fill=image_id)
    assert labels == _expand(original_v1_labels(tokenizer, text), reference_ids, tiny_processor.image_token_id)
    # by hand: only " The cat 12.</s>" after each "ASSISTANT:" trains
    trained = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    assert trained.lstrip() == (" The cat 12.</s>" * turns).lstrip()  # Metaspace decoding drops the first space


def test_text_only_and_image_samples_mix(tiny_processor, tokenizer, folder):
    collator = LlavaDataCollator(tiny_processor, template="vicuna_v1")
    batch = collator([_row(0, folder=folder), _row(1, image=False, answer="two")])
    assert batch["pixel_values"].shape[0] == 1
    assert (batch["input_ids"] == tiny_processor.image_token_id).sum() == N_IMAGE
    assert tokenizer.decode([t for t in batch["labels"][1].tolist() if t != IGNORE_INDEX]) == " two</s>"
    assert batch["attention_mask"][1, -1] == 0 and batch["labels"][1, -1] == IGNORE_INDEX  # right padding
    assert not ((batch["labels"] == tiny_processor.image_token_id).any())


def test_image_position_random_is_seeded_and_varies(tiny_processor, folder):
    def first_user(collator, i):
        return collator.to_messages(_row(i, folder=folder))[0]["content"][0]["type"]

    a, b = (LlavaDataCollator(tiny_processor, image_position="random", seed=3) for _ in range(2))
    firsts = [first_user(a, i) for i in range(20)]
    assert firsts == [first_user(b, i) for i in range(20)]
    assert set(firsts) == {"image", "text"}
    assert {first_user(LlavaDataCollator(tiny_processor, image_position="before"), i) for i in range(5)} == {"image"}
    text, _ = LlavaDataCollator(tiny_processor, image_position="keep").render_with_spans(_row(0, folder=folder))
    assert "USER: <image>\nWhat is shown?" in text


def test_image_goes_before_the_question_by_default_as_in_llava_1_5(tiny_processor, folder):
    rows = [_row(i, folder=folder) for i in range(8)]
    for row in rows:
        row["conversations"][0]["value"] = "What is shown?\n<image>"  # the JSON puts the image after the question
    collator = LlavaDataCollator(tiny_processor)
    for row in rows:
        assert "USER: <image>\nWhat is shown? ASSISTANT:" in collator.render_with_spans(row)[0]
    kept, _ = LlavaDataCollator(tiny_processor, image_position="keep").render_with_spans(rows[0])
    assert "USER: What is shown?\n<image> ASSISTANT:" in kept


def _wide_row(tmp_path):
    path = tmp_path / "wide.png"
    tiny.demo_image(40, seed=5).resize((80, 40)).save(path)  # 2:1, so padding and cropping differ
    return {"id": "w", "image": str(path), "conversations": sample(0)["conversations"]}


def test_image_aspect_ratio_square_crops_and_pad_pads(tmp_path, tokenizer, tiny_config, tiny_processor):
    row = _wide_row(tmp_path)
    square = LlavaDataCollator(tiny_processor, image_aspect_ratio="square")([row])["pixel_values"]
    pad = LlavaDataCollator(tiny_processor, image_aspect_ratio="pad")([row])["pixel_values"]
    image = tiny.demo_image(40, seed=5).resize((80, 40))
    crop_processor = tiny.build_processor(tokenizer, tiny_config, pad=False)  # CLIP's resize + centre crop
    assert torch.allclose(square[0], torch.from_numpy(crop_processor(images=image)["pixel_values"][0]))
    assert torch.allclose(pad[0], torch.from_numpy(tiny_processor(images=image)["pixel_values"][0]))  # do_pad=True
    assert not torch.allclose(square, pad)


@pytest.mark.parametrize("size", [(80, 40), (40, 80)])
def test_pad_with_a_clip_image_processor_is_the_originals_pipeline(tmp_path, tokenizer, tiny_config, size):
    """LLaVA-1.5 pads in its data pipeline (the mean colour), then runs whatever image processor the tower has."""
    path = tmp_path / "odd.png"
    tiny.demo_image(40, seed=5).resize(size).save(path)
    row = {"id": "w", "image": str(path), "conversations": sample(0)["conversations"]}
    clip = tiny.build_processor(tokenizer, tiny_config, pad=False)  # a CLIPImageProcessor, as llava-hf ships
    ours = LlavaDataCollator(clip, image_aspect_ratio="pad")([row])["pixel_values"][0]
    # the original: expand2square(image, tuple(int(x * 255) for x in image_mean)), then the image processor
    image = Image.open(path).convert("RGB")
    mean = tuple(int(x * 255) for x in clip.image_processor.image_mean)
    assert mean == (122, 116, 104)
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), mean)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    expected = clip.image_processor(canvas, return_tensors="np")["pixel_values"][0]
    assert torch.equal(ours, torch.from_numpy(expected))
    square = LlavaDataCollator(clip, image_aspect_ratio="square")([row])["pixel_values"][0]
    assert not torch.allclose(square, ours)  # CLIP's own resize + centre crop, no pad


def test_end_of_turn_must_be_one_special_token_of_the_tokenizer(tiny_config):
    """vicuna_v1 ends answers with `</s>`: a tokenizer without it (Llama-3 / Qwen style) would teach the text."""
    qwen_like = tiny.build_tokenizer(eos_token="<|endoftext|>")
    processor = tiny.build_processor(qwen_like, tiny_config)
    with pytest.raises(ValueError) as error:
        LlavaDataCollator(processor, template="vicuna_v1")
    message = str(error.value)
    assert "template='vicuna_v1'" in message and "'</s>'" in message
    assert str(qwen_like.tokenize("</s>")) in message  # what the tokenizer makes of it
    assert "eos_token '<|endoftext|>'" in message and "add_tokens(['</s>'], special_tokens=True)" in message
    LlavaDataCollator(processor, template="plain")  # a plain-text end (a newline) needs no token
    with pytest.raises(ValueError, match="template='chatml' ends each answer with '<\\|im_end\\|>'"):
        LlavaDataCollator(processor, template="chatml")
    qwen_like.add_tokens(["<|im_end|>"], special_tokens=True)  # the fix the message names
    end_id = qwen_like.convert_tokens_to_ids("<|im_end|>")
    batch = LlavaDataCollator(processor, template="chatml")([{"id": "t", "image": None, "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "A cat."}]}])
    labels = [t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX]
    assert labels[-1] == end_id and labels.count(end_id) == 1  # the end of turn is learnt as one token


def test_mask_that_cannot_be_built_raises_with_sample_id(tiny_processor, folder):
    # renders the message count first: a prefix of the messages is not a prefix of the full text
    template = ("{{ messages|length }}{% for m in messages %}{{ m['content'] if m['content'] is string else 'q' }}"
                "{% endfor %}")
    collator = LlavaDataCollator(tiny_processor, template=template)
    with pytest.raises(LlavaMaskError, match="'s0'"):
        collator([_row(0, folder=folder)])


def test_truncation_text_only_keeps_image_tokens(tiny_processor, folder):
    row = _row(0, turns=3, folder=folder)
    full = LlavaDataCollator(tiny_processor, image_position="before")([row])
    cut = LlavaDataCollator(tiny_processor, image_position="before", max_length=60)([row])
    assert cut["input_ids"].shape[1] == 60
    assert (cut["input_ids"] == tiny_processor.image_token_id).sum() == N_IMAGE
    # right truncation, text only: the last text tokens go, every image token stays, labels follow their tokens
    ids = full["input_ids"][0].tolist()
    text_positions = [i for i, t in enumerate(ids) if t != tiny_processor.image_token_id]
    dropped = set(text_positions[len(text_positions) - (len(ids) - 60):])
    kept = [i for i in range(len(ids)) if i not in dropped]
    assert torch.equal(cut["input_ids"][0], full["input_ids"][0, kept])
    assert torch.equal(cut["labels"][0], full["labels"][0, kept])
    assert (cut["labels"][0] != IGNORE_INDEX).sum() < (full["labels"][0] != IGNORE_INDEX).sum()


def test_truncation_true_refuses_to_cut_image_tokens(tiny_processor, folder):
    collator = LlavaDataCollator(tiny_processor, template="plain", max_length=10, truncation=True)
    with pytest.raises(ValueError, match="cut through its image tokens"):
        collator([_row(0, folder=folder)])


def test_bad_image_policy(tmp_path, tiny_processor, caplog):
    path, folder = write_llava(tmp_path, [sample(0), sample(1)])
    ds = load_llava_dataset(path, image_folder=folder)
    (folder / "img1.png").write_bytes(b"not a png")  # corrupted after validation, as met during training
    with pytest.raises(ValueError, match=r"Sample 's1'.*img1.png"):
        LlavaDataCollator(tiny_processor)([ds[0], ds[1]])
    collator = LlavaDataCollator(tiny_processor, bad_image_policy="skip")
    with caplog.at_level(logging.WARNING):
        batch = collator([ds[0], ds[1]])
        batch2 = collator([ds[1]])  # a whole bad batch: the last good sample stands in
    assert batch["input_ids"].shape[0] == 1 and batch2["input_ids"].shape[0] == 1
    assert len(collator.skipped) == 2 and "'s1'" in collator.summary() and "img1.png" in collator.summary()


def _next_rows(tmp_path, next_images):
    """One row per NeXT test image (wide, tall, about square; one and two turns), then a text-only row."""
    rows = []
    for i, image in enumerate(next_images):
        path = tmp_path / f"next{i}.png"
        image.save(path)
        rows.append({"id": f"n{i}", "image": str(path),
                     "conversations": sample(i, turns=1 + i % 2, answer="The cat 12.")["conversations"]})
    return rows + [{"id": "t", "image": None, "conversations": sample(3, image=False, answer="two")["conversations"]}]


def test_anyres_batch_tiles_counts_and_labels(tmp_path, tokenizer, next_model, next_processor, next_images):
    """LLaVA-NeXT: each image as it is (never padded to a square) in its own grid's tiles, zero tiles up to the
    batch's largest count, `<image>` expanded to what the model packs for that image, labels as the original's."""
    rows = _next_rows(tmp_path, next_images)
    collator = LlavaDataCollator(next_processor, template="vicuna_v1", image_aspect_ratio="anyres")
    batch = collator(rows)
    assert batch["pixel_values"].shape == (3, 5, 3, 16, 16)  # (images, max tiles, C, H, W)
    assert batch["image_sizes"].tolist() == [[18, 60], [40, 14], [33, 36]]  # (height, width), as the files are
    tiles = []
    for k, image in enumerate(next_images):  # transformers' own tiles of the image, unpadded
        own = torch.from_numpy(next_processor.image_processor(image, do_pad=False)["pixel_values"][0])
        tiles.append(own.shape[0])
        assert torch.equal(batch["pixel_values"][k, :own.shape[0]], own.float())
        assert not batch["pixel_values"][k, own.shape[0]:].any()
    assert tiles == [4, 4, 5]  # overview + 1x3, 3x1, 2x2
    with torch.no_grad():
        features = next_model.model.get_image_features(batch["pixel_values"], image_sizes=batch["image_sizes"])
        loss = next_model(**batch).loss
    counts = [len(f) for f in getattr(features, "pooler_output", features)]  # 5.x returns the output object
    image_id = next_processor.image_token_id
    assert (batch["input_ids"] == image_id).sum(1).tolist() == counts + [0] and len(set(counts)) == 3
    assert torch.isfinite(loss)
    for i, row in enumerate(rows):
        text, _ = collator.render_with_spans(row)
        reference = tokenizer(text).input_ids
        n = counts[i] if i < len(counts) else 0
        length = int(batch["attention_mask"][i].sum())  # right padding: the row's tokens come first
        assert batch["input_ids"][i, :length].tolist() == _expand(reference, reference, image_id, image_id, n)
        assert batch["labels"][i, :length].tolist() == _expand(original_v1_labels(tokenizer, text), reference,
                                                               image_id, n=n)
        assert not batch["attention_mask"][i, length:].any() and (batch["labels"][i, length:] == IGNORE_INDEX).all()
    # the processor's own setting (None) is AnyRes too: the same batch
    same = LlavaDataCollator(next_processor, template="vicuna_v1")(rows)
    assert all(torch.equal(same[key], batch[key]) for key in batch)


def test_anyres_and_the_processor_must_agree(tiny_processor, next_processor):
    # LlavaImageProcessor, LlavaImageProcessorPil on transformers 5.x
    with pytest.raises(ValueError, match="image_aspect_ratio='anyres', but the processor's LlavaImageProcessor(Pil)? "
                                         "has no image_grid_pinpoints"):
        LlavaDataCollator(tiny_processor, image_aspect_ratio="anyres")
    for ratio in ("pad", "square"):  # an AnyRes processor tiles: padding or cropping first would change the model
        with pytest.raises(ValueError, match=f"image_aspect_ratio='{ratio}', but the processor is AnyRes"):
            LlavaDataCollator(next_processor, image_aspect_ratio=ratio)

"""Parity with transformers' own llava: same weights -> same logits and the same greedy tokens."""

import pytest
import torch
import transformers

from hf_llava import LlavaForConditionalGeneration
from hf_llava.conversion import transformers_config


def anchor_from(model):
    """transformers.LlavaForConditionalGeneration with our config and weights (strict load)."""
    anchor = transformers.LlavaForConditionalGeneration(transformers_config(model.config)).eval()
    anchor.load_state_dict(model.state_dict(), strict=True)
    return anchor


def batch_of_two(processor, images):
    messages = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in the image?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Describe it."}, {"type": "image"}]}],
    ]
    prompts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in messages]
    return processor(images=images, text=prompts, padding=True, return_tensors="pt")


def test_state_dict_names_match_transformers(tiny_model):
    anchor = anchor_from(tiny_model)
    assert set(anchor.state_dict()) == set(tiny_model.state_dict())


def test_logits_match_transformers(tiny_model, tiny_processor, images):
    anchor = anchor_from(tiny_model)
    inputs = batch_of_two(tiny_processor, images)
    assert inputs["attention_mask"][:, 0].tolist() != [1, 1]  # left padding is exercised
    with torch.no_grad():
        ours, theirs = tiny_model(**inputs), anchor(**inputs)
    assert (ours.logits - theirs.logits).abs().max().item() <= 1e-5
    # image_hidden_states is (num_images, tokens_per_image, hidden), as documented
    assert ours.image_hidden_states.shape == (2, tiny_model.config.image_seq_length, 64)


def test_greedy_tokens_match_transformers_left_padded_batch(tiny_model, tiny_processor, images):
    anchor = anchor_from(tiny_model)
    inputs = batch_of_two(tiny_processor, images)
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=tiny_processor.tokenizer.pad_token_id)
    ours = tiny_model.generate(**inputs, **kwargs)
    theirs = anchor.generate(**inputs, **kwargs)
    assert ours.shape[1] == inputs["input_ids"].shape[1] + 12
    assert torch.equal(ours, theirs)


def test_multi_layer_features_match_transformers(tiny_config, tiny_processor, images):
    config = tiny_config.__class__.from_dict({**tiny_config.to_dict(), "vision_feature_layer": [-3, -1]})
    torch.manual_seed(1)
    model = LlavaForConditionalGeneration(config).eval()
    anchor = anchor_from(model)
    inputs = batch_of_two(tiny_processor, images)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, anchor(**inputs).logits, atol=1e-5)


def test_kv_cache_generation_equals_uncached(tiny_model, tiny_processor, images):
    inputs = batch_of_two(tiny_processor, images)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=tiny_processor.tokenizer.pad_token_id)
    cached = tiny_model.generate(**inputs, use_cache=True, **kwargs)
    uncached = tiny_model.generate(**inputs, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_text_only_and_several_images_per_prompt(tiny_model, tiny_processor, images):
    text = tiny_processor.apply_chat_template(
        [{"role": "user", "content": "Hello, what can you do?"}], add_generation_prompt=True)
    out = tiny_model.generate(**tiny_processor(text=text, return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 4
    two = tiny_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]}],
        add_generation_prompt=True)
    inputs = tiny_processor(images=images, text=two, return_tensors="pt")
    anchor = anchor_from(tiny_model)
    with torch.no_grad():
        assert torch.allclose(tiny_model(**inputs).logits, anchor(**inputs).logits, atol=1e-5)


def test_image_token_count_mismatch_states_the_counts(tiny_model, tiny_processor, images):
    inputs = tiny_processor(images=images[:1], text="USER: <image>\nhi ASSISTANT:", return_tensors="pt")
    n = tiny_model.config.image_seq_length
    with pytest.raises(ValueError, match=rf"{n} image tokens .* 2 image\(s\) x {n} tokens per image = {2 * n}"):
        tiny_model(input_ids=inputs["input_ids"], pixel_values=torch.cat([inputs["pixel_values"]] * 2))


def test_labels_give_the_shifted_cross_entropy(tiny_model, tiny_processor, images):
    inputs = tiny_processor(images=images[:1], text="USER: <image>\nhi ASSISTANT: a red square</s>",
                            return_tensors="pt")
    labels = inputs["input_ids"].clone()
    labels[labels == tiny_model.config.image_token_id] = -100
    out = tiny_model(**inputs, labels=labels)
    expected = torch.nn.functional.cross_entropy(
        out.logits[0, :-1], labels[0, 1:], ignore_index=-100)
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, tiny_processor, images):
    inputs = tiny_processor(images=images[:1], text="USER: <image>\nhi ASSISTANT: a cat</s>", return_tensors="pt")
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == tiny_config.image_token_id, -100)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(tiny_config).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.language_model.gradient_checkpointing
        model(**inputs, labels=labels).loss.backward()
        grads.append(model.multi_modal_projector.linear_1.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_sdpa_is_the_default_attention(tiny_model):
    assert tiny_model.config._attn_implementation == "sdpa"
    assert tiny_model.language_model.config._attn_implementation == "sdpa"


def test_the_kv_cache_goes_in_under_either_name_and_comes_out_under_the_installed_lines(tiny_model, tiny_processor,
                                                                                         images):
    """transformers 5.25 renamed `past_key_values` to `cache`; both names feed a step that continues the prompt's
    cache to the logits of the whole sequence, and the output field is the one this line's own models use."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    from hf_llava.modeling.modeling_llava import CACHE_NAME

    assert CACHE_NAME in BaseModelOutputWithPast.__dataclass_fields__
    inputs = tiny_processor(images=images[:1], text="USER: <image>\nWhat is it? ASSISTANT: a", return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        whole = tiny_model(**inputs).logits[:, -1]
        for name in ("cache", "past_key_values"):
            prompt = tiny_model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                                pixel_values=inputs["pixel_values"], use_cache=True)
            cache = getattr(prompt, CACHE_NAME)
            assert cache is not None and cache.get_seq_length() == ids.shape[1] - 1
            step = tiny_model(input_ids=ids[:, -1:], attention_mask=mask, use_cache=True, **{name: cache})
            assert (step.logits[:, -1] - whole).abs().max().item() <= 1e-5, name
        with pytest.raises(ValueError, match="Both `cache` and `past_key_values`"):
            tiny_model(input_ids=ids[:, -1:], cache=cache, past_key_values=cache)

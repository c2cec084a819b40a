"""One model object, many threads: a server and Gradio's handlers call the same model at once."""

from concurrent.futures import ThreadPoolExecutor

import torch

from hf_llava import LlavaForConditionalGeneration

from .test_backbones import visual_tokens

_THREADS = 4
_CALLS = 50


def _inputs(config, seed: int) -> dict:
    """One image per sample and its tokens first, then text; different pictures and text for every seed."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, config.vision_config.image_size, config.vision_config.image_size, generator=generator)
    text = torch.randint(5, config.text_config.vocab_size - 1, (2, 6), generator=generator)
    text[text == config.image_token_id] = 5
    image_tokens = torch.full((2, config.image_seq_length), config.image_token_id)
    return {"input_ids": torch.cat([image_tokens, text], dim=1), "pixel_values": image}


def test_concurrent_forwards_match_single_threaded_ones_and_leave_the_model_as_it_was(tiny_config):
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(tiny_config).eval()
    inputs = [_inputs(tiny_config, seed) for seed in range(_CALLS)]
    modules_before = len(list(model.vision_tower.modules()))
    with torch.no_grad():
        expected = [model(**x).logits for x in inputs]
        with ThreadPoolExecutor(_THREADS) as pool:
            got = list(pool.map(lambda x: model(**x).logits, inputs))
    for want, have in zip(expected, got):
        assert torch.equal(want, have)

    # The tower is whole afterwards: the same modules, every layer's hidden state, and layer -2 still the one before
    # the last (the features equal a fresh model's with the same weights).
    assert len(list(model.vision_tower.modules())) == modules_before
    pixel_values = inputs[0]["pixel_values"]
    fresh = LlavaForConditionalGeneration(tiny_config).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        tower = model.vision_tower(pixel_values, output_hidden_states=True)
        features, fresh_features = (visual_tokens(m, pixel_values, vision_feature_layer=-2) for m in (model, fresh))
        fresh_layer = fresh.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-2]
    assert len(tower.hidden_states) == tiny_config.vision_config.num_hidden_layers + 1
    assert torch.equal(features, fresh_features)
    assert torch.equal(features, fresh.model.multi_modal_projector(fresh_layer[:, 1:]))


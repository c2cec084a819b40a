"""Projector types and backbones: any vision tower / causal LM that the Auto classes know."""

import pytest
import torch

from transformers.modeling_outputs import BaseModelOutputWithPooling

from hf_llava import LlavaForConditionalGeneration
from hf_llava._compat import TRANSFORMERS_5
from hf_llava.tiny import build_config

from .test_parity import anchor_from, batch_of_two


def visual_tokens(model, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
    """`get_image_features`' visual tokens `(num_images, tokens, text_hidden)`: what it returns on transformers 4.57,
    its `pooler_output` on 5.x (as 5.x's llava)."""
    output = model.get_image_features(pixel_values, **kwargs)
    return output.pooler_output if TRANSFORMERS_5 else output


@pytest.mark.parametrize(
    "projector_type, names",
    [
        ("linear", {"linear_1.weight", "linear_1.bias"}),
        ("mlp2x_gelu", {"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}),
        ("mlp3x_gelu", {f"linear_{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}),
    ],
)
def test_projector_layouts(tokenizer, projector_type, names):
    config = build_config(tokenizer, projector_type=projector_type)
    model = LlavaForConditionalGeneration(config)
    assert set(model.multi_modal_projector.state_dict()) == names
    pixel_values = torch.randn(2, 3, 30, 30)
    assert visual_tokens(model, pixel_values).shape == (2, 25, 64)


def test_identity_projector_passes_features_through(tokenizer):
    config = build_config(tokenizer, projector_type="identity", vision_hidden_size=64)
    model = LlavaForConditionalGeneration(config).eval()
    assert len(model.multi_modal_projector.state_dict()) == 0
    pixel_values = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        hidden = model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        assert torch.equal(visual_tokens(model, pixel_values), hidden)


@pytest.mark.parametrize("text_model_type", ["mistral", "qwen2"])
def test_language_models_match_transformers(tokenizer, tiny_processor, images, text_model_type):
    """Mistral and Qwen2 LMs (Llama's case is test_parity's): transformers' llava with the same weights
    gives the same logits and the same greedy tokens on a left-padded batch."""
    config = build_config(tokenizer, text_model_type=text_model_type)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    assert model.language_model.config.model_type == text_model_type
    anchor = anchor_from(model)
    inputs = batch_of_two(tiny_processor, images)
    with torch.no_grad():
        assert (model(**inputs).logits - anchor(**inputs).logits).abs().max().item() <= 1e-5
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=tiny_processor.tokenizer.pad_token_id)
    ours = model.generate(**inputs, **kwargs)
    assert ours.shape[1] == inputs["input_ids"].shape[1] + 8
    assert torch.equal(ours, anchor.generate(**inputs, **kwargs))


def test_siglip_tower_with_full_strategy(tokenizer):
    config = build_config(tokenizer, vision_feature_select_strategy="full")
    siglip = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 30, "patch_size": 6}
    settings = {**config.to_dict(), "vision_config": siglip}
    settings.pop("image_seq_length")  # derived from the new tower
    config = config.__class__.from_dict(settings)
    model = LlavaForConditionalGeneration(config).eval()
    assert type(model.vision_tower).__name__ == "SiglipVisionModel"
    assert config.image_seq_length == 25  # no CLS in SigLIP
    assert visual_tokens(model, torch.randn(1, 3, 30, 30)).shape == (1, 25, 64)


@pytest.mark.parametrize("layer", [-2, -1, 0, 1, [-3, -1], [0, -2]])
def test_image_features_read_the_selected_layers_of_the_whole_tower(tiny_config, tiny_processor, images, layer):
    """Every tower layer runs (a model shared by threads is never shortened during a call), the features are the
    selected hidden states, projected, and the tower is left as it was."""
    torch.manual_seed(0)
    config = tiny_config.__class__.from_dict({**tiny_config.to_dict(), "vision_feature_layer": layer})
    model = LlavaForConditionalGeneration(config).eval()
    pixel_values = tiny_processor(images=images[:1], text="<image>", return_tensors="pt")["pixel_values"]
    tower = model.model.vision_tower
    num_layers = config.vision_config.num_hidden_layers
    parameters = [id(p) for p in tower.parameters()]
    ran = []
    layer_names = tuple(f"layers.{i}" for i in range(num_layers))
    hooks = [block.register_forward_hook(lambda *_: ran.append(1))
             for name, block in tower.named_modules() if name.endswith(layer_names)]
    with torch.no_grad():
        features = visual_tokens(model.model, pixel_values)
    for hook in hooks:
        hook.remove()
    assert len(ran) == num_layers
    positions = [layer] if isinstance(layer, int) else layer
    with torch.no_grad():
        states = tower(pixel_values, output_hidden_states=True).hidden_states
        expected = torch.cat([states[i][:, 1:] for i in positions], dim=-1)
        assert torch.equal(features, model.model.multi_modal_projector(expected))
    assert [id(p) for p in tower.parameters()] == parameters and len(states) == num_layers + 1


def test_a_layer_the_tower_has_not_is_an_error_naming_its_depth(tiny_model):
    with pytest.raises(ValueError, match="vision_feature_layer=-4, but the vision tower has 2 layers"):
        tiny_model.get_image_features(torch.randn(1, 3, 30, 30), vision_feature_layer=-4)


def test_get_image_features_returns_what_the_installed_line_s_llava_returns(tiny_model):
    """4.57: the visual tokens. 5.x: a `BaseModelOutputWithPooling` with them as `pooler_output` and the tower's
    states beside them (a tuple with return_dict=False), as transformers' llava on each line."""
    pixel_values = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        output = tiny_model.get_image_features(pixel_values)
        if not TRANSFORMERS_5:
            assert isinstance(output, torch.Tensor) and output.shape == (2, 25, 64)
            return
        assert isinstance(output, BaseModelOutputWithPooling)
        assert output.pooler_output.shape == (2, 25, 64) and output.last_hidden_state.shape == (2, 26, 32)
        assert output.hidden_states is None  # only when asked for
        assert len(tiny_model.get_image_features(pixel_values, output_hidden_states=True).hidden_states) == 3
        as_tuple = tiny_model.get_image_features(pixel_values, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], output.pooler_output)
        forward = tiny_model(input_ids=torch.full((2, 25), tiny_model.config.image_token_id), pixel_values=pixel_values)
        assert torch.equal(forward.image_outputs.pooler_output, forward.image_hidden_states)

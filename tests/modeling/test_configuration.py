"""LlavaConfig: validation, derived counts, serialisation."""

import pytest

from hf_llava import LlavaConfig

CLIP = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
         "num_attention_heads": 2, "vocab_size": 100}


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"projector_type": "conv"}, "projector_type"),
        ({"projector_type": "mlp0x_gelu"}, "projector_type"),
        ({"vision_feature_select_strategy": "cls"}, "vision_feature_select_strategy"),
        ({"vision_feature_layer": "last"}, "vision_feature_layer"),
        ({"vision_feature_layer": []}, "vision_feature_layer"),
        ({"image_aspect_ratio": "crop"}, "image_aspect_ratio"),
        ({"image_aspect_ratio": "anyres", "image_grid_pinpoints": [[28, 50]]}, "image_grid_pinpoints"),
        ({"image_aspect_ratio": "anyres", "image_grid_pinpoints": [[28]]}, "image_grid_pinpoints"),
        ({"image_aspect_ratio": "anyres", "image_grid_pinpoints": []}, "image_grid_pinpoints"),
        ({"image_aspect_ratio": "anyres", "patch_merge_type": "spatial_pad"}, "patch_merge_type"),
        ({"image_aspect_ratio": "anyres", "vision_feature_select_strategy": "full"}, "vision_feature_select_strategy"),
        ({"image_seq_length": 3}, "image_seq_length"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LlavaConfig(vision_config=dict(CLIP), text_config=dict(LLAMA), **kwargs)


def test_identity_projector_needs_matching_widths():
    with pytest.raises(ValueError, match="identity"):
        LlavaConfig(vision_config=dict(CLIP), text_config={**LLAMA, "hidden_size": 64}, projector_type="identity")
    LlavaConfig(vision_config=dict(CLIP), text_config=dict(LLAMA), projector_type="identity")


def test_image_seq_length_follows_the_tower():
    assert LlavaConfig(vision_config=dict(CLIP), text_config=dict(LLAMA)).image_seq_length == 4
    full = LlavaConfig(vision_config=dict(CLIP), text_config=dict(LLAMA), vision_feature_select_strategy="full")
    assert full.image_seq_length == 5  # + CLS
    siglip = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    assert LlavaConfig(vision_config=siglip, text_config=dict(LLAMA),
                       vision_feature_select_strategy="full").image_seq_length == 4


def test_defaults_are_llava_1_5():
    config = LlavaConfig()
    assert config.model_type == "hf_llava"
    assert config.projector_type == "mlp2x_gelu"
    assert config.vision_feature_layer == -2
    assert config.image_seq_length == 576
    assert config.image_token_id == config.image_token_index == 32000


def test_round_trip_through_save(tmp_path):
    config = LlavaConfig(vision_config=dict(CLIP), text_config=dict(LLAMA), projector_type="mlp3x_gelu",
                         vision_feature_layer=[-2, -1])
    config.save_pretrained(tmp_path)
    loaded = LlavaConfig.from_pretrained(tmp_path)
    assert loaded.projector_type == "mlp3x_gelu"
    assert loaded.vision_feature_layer == [-2, -1]
    assert loaded.text_config.hidden_size == 32 and loaded.vision_config.patch_size == 14

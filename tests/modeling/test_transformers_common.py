"""transformers' own common model and config tests, run on our classes as transformers runs them on its llava.

The suites come from the installed transformers' source distribution (see tests/transformers_common.py, which
also says which parts of them the sdist lacks). The model tester mirrors transformers' `LlavaVisionText2TextModelTester`
(tests/models/llava/test_modeling_llava.py) with our tiny config: a 2-layer CLIP tower (25 visual tokens) and a
2-layer Llama; the skips are transformers' llava skips plus what the sdist cannot run, each with its reason.
"""

import copy
import unittest

import pytest
import torch

from hf_llava import LlavaConfig, LlavaForConditionalGeneration, tiny
from hf_llava.modeling import LlavaModel
from tests.transformers_common import Unavailable, load

try:
    common = load()
except Unavailable as error:
    pytest.skip(str(error), allow_module_level=True)

ModelTesterMixin = common.modeling.ModelTesterMixin
ConfigTester = common.configuration.ConfigTester
floats_tensor = common.modeling.floats_tensor
ids_tensor = common.modeling.ids_tensor

_TOKENIZER = tiny.build_tokenizer()
# transformers' llava tester has 3; 7 is the batch `test_eager_matches_sdpa_inference` runs, which then passes
# our images with their prompts (`additional_model_inputs`) instead of padding them with random rows
_BATCH_SIZE = 7
_TEXT_LENGTH = 7


class LlavaModelTester:
    """Configs and inputs for the common tests: our tiny LLaVA, a prompt of `_TEXT_LENGTH` text tokens after the
    image's tokens, one image per sample."""

    def __init__(self, parent):
        self.parent = parent
        config = self.get_config()
        self.vision_config = config.vision_config.to_dict()
        self.text_config = config.text_config.to_dict()
        self.image_token_index = config.image_token_index
        self.pad_token_id = config.text_config.pad_token_id
        self.num_hidden_layers = config.text_config.num_hidden_layers
        self.vocab_size = config.text_config.vocab_size
        self.hidden_size = config.text_config.hidden_size
        self.num_attention_heads = config.text_config.num_attention_heads
        self.is_training = True
        self.batch_size = _BATCH_SIZE
        self.num_channels = 3
        self.image_size = config.vision_config.image_size
        self.patch_size = config.vision_config.patch_size
        self.num_image_tokens = config.image_seq_length
        self.seq_length = _TEXT_LENGTH + self.num_image_tokens
        self.encoder_seq_length = self.seq_length

    def get_config(self) -> LlavaConfig:
        config = tiny.build_config(_TOKENIZER)
        # as transformers' llava tester: image token 0, so that tests which shrink the vocabulary (and clamp the ids
        # into it) keep the image tokens; the text is drawn from ids 2.. (never the image token)
        config.image_token_index = 0
        return config

    def prepare_config_and_inputs(self):
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return config, pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        input_ids = ids_tensor([self.batch_size, self.seq_length], config.text_config.vocab_size - 2) + 2
        input_ids[:, : self.num_image_tokens] = config.image_token_index
        attention_mask = torch.ones(input_ids.shape, dtype=torch.long)
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


# Skipped tests, by name prefix: each test's variants on every line (4.57's `_use_reentrant`, 5.25's
# `_use_reentrant_true`, parameterized `_0_linear`...).
_SKIPPED_FAMILIES = {
    "test_training_gradient_checkpointing": (
        "LLaVA reads the vision tower's hidden states, not its output: the layers after `vision_feature_layer` and "
        "the tower's post_layernorm get no gradient, which these tests require of every parameter (transformers' "
        "llava skips them too)"
    ),
    "test_model_rope_scaling_from_config": (
        "feeds random token ids, which include the image token, without pixel_values: ours refuses such a prompt with "
        "a ValueError naming the fix (transformers' llava embeds the placeholder as text); RoPE scaling is the LM's "
        "own, which transformers tests on Llama"
    ),
}


@pytest.mark.filterwarnings("default::FutureWarning")  # a test checks that the old cache keyword warns
class LlavaForConditionalGenerationCommonTest(ModelTesterMixin, unittest.TestCase):
    """The installed transformers' `ModelTesterMixin` and `ConfigTester` on `LlavaModel` and
    `LlavaForConditionalGeneration`."""

    all_model_classes = (LlavaModel, LlavaForConditionalGeneration)
    _is_composite = True
    # transformers 4.57's suites: head pruning and head masking, which the LM (Llama) has not (4.57's VLM tests
    # turn them off the same way; 5.x dropped both)
    test_pruning = False
    test_head_masking = False
    # passed beside `input_ids` where a test builds its own inputs (our model refuses image tokens without images)
    additional_model_inputs = ["pixel_values"]

    def setUp(self):
        self.model_tester = LlavaModelTester(self)
        # transformers' llava lists `image_seq_length` too; ours derives it from the tower and refuses a value that
        # disagrees (4.57's tester builds `LlavaConfig(image_seq_length=2)`), so it is not a free property here
        self.config_tester = ConfigTester(
            self, config_class=LlavaConfig, has_text_modality=False,
            common_properties=["image_token_index", "vision_feature_layer"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_mismatching_num_image_tokens(self):
        """As transformers' llava test: an image missing for its tokens (or one too many tokens) is an error."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            model(**copy.deepcopy(inputs))
            one_image_short = dict(inputs, pixel_values=inputs["pixel_values"][-1:])
            with self.assertRaises(ValueError):  # ours raises ValueError with the counts (transformers: RuntimeError)
                model(**one_image_short)
            input_ids = torch.cat([inputs["input_ids"][:1]] * 2)
            with self.assertRaises(ValueError):
                model(input_ids=input_ids, pixel_values=inputs["pixel_values"][:1])
            model(input_ids=input_ids, pixel_values=torch.cat([inputs["pixel_values"][:1]] * 2))

    @unittest.skip(reason="transformers' llava skips it: VLM inputs cannot be made padding-free simply "
                          "(covered by the LM's own tests); it needs flash attention (CUDA) anyway")
    def test_flash_attention_2_padding_matches_padding_free_with_position_ids(self):
        pass

    @unittest.skip(reason="the sdist lacks tests/generation/test_utils.py, so this class cannot inherit the real "
                          "GenerationTesterMixin this check asks for (generation is covered by our own tests)")
    def test_generation_tester_mixin_inheritance(self):
        pass


for _name in dir(ModelTesterMixin):
    for _prefix, _reason in _SKIPPED_FAMILIES.items():
        if _name.startswith(_prefix):
            setattr(LlavaForConditionalGenerationCommonTest, _name, unittest.skip(_reason)(lambda self: None))


class LlavaNextModelTester(LlavaModelTester):
    """As `LlavaModelTester`, for an AnyRes (LLaVA-NeXT) config, as transformers' llava_next tester: square images of
    the tower's size, which take the 1x2 grid (3 tiles of the 5 `max_tiles`), with their `image_sizes`."""

    def __init__(self, parent):
        super().__init__(parent)
        processor = tiny.build_processor(_TOKENIZER, self.get_config())
        self.num_image_tokens = processor.anyres_num_image_tokens((self.image_size,) * 2, (self.image_size,) * 2)
        self.seq_length = self.encoder_seq_length = _TEXT_LENGTH + self.num_image_tokens

    def get_config(self) -> LlavaConfig:
        config = tiny.build_config(_TOKENIZER, image_size=16, patch_size=4, image_aspect_ratio="anyres")
        config.image_token_index = 0
        return config

    def prepare_config_and_inputs(self):
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, config.max_tiles, self.num_channels, self.image_size,
                                      self.image_size])
        return config, pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, inputs = super().prepare_config_and_inputs_for_common()
        inputs["image_sizes"] = torch.tensor([[self.image_size, self.image_size]] * self.batch_size)
        return config, inputs


class LlavaNextCommonTest(LlavaForConditionalGenerationCommonTest):
    """The same suites on an AnyRes model (transformers runs them on its llava_next)."""

    additional_model_inputs = ["pixel_values", "image_sizes"]
    # the tower sees tiles (3 per image here), not images, so its output's first dimension is no batch size (what
    # transformers' suites do for models whose tower sees patches or tiles)
    skip_test_image_features_output_shape = True

    def setUp(self):
        super().setUp()
        self.model_tester = LlavaNextModelTester(self)

    def test_mismatching_num_image_tokens(self):
        """As transformers' llava_next test: an image missing for its tokens is an error naming the counts."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            model(**copy.deepcopy(inputs))
            one_image_short = dict(inputs, pixel_values=inputs["pixel_values"][-1:], image_sizes=inputs[
                "image_sizes"][-1:])
            with self.assertRaisesRegex(ValueError, "image tokens"):
                model(**one_image_short)

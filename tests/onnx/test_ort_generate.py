"""ORTLlavaForConditionalGeneration: loading (dtype "auto", logging), GenerationConfig fields, streamers and
stopping criteria.

Every field the ORT loop implements gives PyTorch's `generate` tokens; every other field set away from its
default is refused by name instead of being silently ignored. A streamer sees the same `put` calls and a stopping
criterion stops the same rows as in PyTorch's `generate`.
"""

import logging

import pytest
import torch

pytest.importorskip("onnxruntime")

from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from hf_llava.onnx import ORTLlavaForConditionalGeneration

PROMPTS = ["USER: <image>\nWhat is shown in the image? ASSISTANT:", "USER: <image>\nColor? ASSISTANT:"]


@pytest.fixture(scope="module")
def ort_model(exported):
    return ORTLlavaForConditionalGeneration.from_pretrained(exported[2])


@pytest.fixture(scope="module")
def batch(exported, images):
    return exported[1](images=images, text=PROMPTS, padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def greedy(exported, batch):
    """PyTorch's plain greedy tokens (new tokens only)."""
    with torch.no_grad():
        return exported[0].generate(**batch, do_sample=False, max_new_tokens=10)[:, batch["input_ids"].shape[1]:]


def _fields(case: str, greedy: torch.Tensor, prompt_length: int, eos: int) -> dict:
    first, second = int(greedy[0, 0]), int(greedy[0, 1])
    return {
        "no_repeat_ngram_size": dict(no_repeat_ngram_size=1),
        "min_length": dict(min_length=prompt_length + 8, eos_token_id=second),
        "bad_words_ids": dict(bad_words_ids=[[first], [second]]),
        "suppress_tokens": dict(suppress_tokens=[first, second]),
        "begin_suppress_tokens": dict(begin_suppress_tokens=[first]),
        "sequence_bias": dict(sequence_bias={(first,): -100.0}),
        "forced_eos_token_id": dict(forced_eos_token_id=eos, max_new_tokens=4),
    }[case]


@pytest.mark.parametrize("case", ["no_repeat_ngram_size", "min_length", "bad_words_ids", "suppress_tokens",
                                  "begin_suppress_tokens", "sequence_bias", "forced_eos_token_id"])
def test_supported_fields_give_pytorch_tokens(case, exported, ort_model, batch, greedy):
    model = exported[0]
    fields = _fields(case, greedy, batch["input_ids"].shape[1], model.config.text_config.eos_token_id)
    gen = dict(do_sample=False, max_new_tokens=10, pad_token_id=model.config.text_config.pad_token_id) | fields
    without = {k: v for k, v in gen.items() if k != case}
    with torch.no_grad():
        expected, baseline = model.generate(**batch, **gen), model.generate(**batch, **without)
    assert expected.shape != baseline.shape or not torch.equal(expected, baseline), f"{case} changes nothing"
    assert torch.equal(ort_model.generate(**batch, **gen), expected)


@pytest.mark.parametrize("fields, named", [
    (dict(num_beams=3), "num_beams=3"),
    (dict(do_sample=True, num_return_sequences=2), "num_return_sequences=2"),
    (dict(penalty_alpha=0.6, top_k=4), "penalty_alpha=0.6"),
    (dict(do_sample=True, min_p=0.1), "min_p=0.1"),
    (dict(output_hidden_states=True), "output_hidden_states=True"),
])
def test_unimplemented_fields_are_refused_by_name(fields, named, ort_model, batch):
    with pytest.raises(ValueError, match=named):
        ort_model.generate(**batch, max_new_tokens=3, **fields)
    with pytest.raises(ValueError, match=named):  # the same through a GenerationConfig
        ort_model.generate(**batch, generation_config=GenerationConfig(max_new_tokens=3, **fields))


def test_folder_generation_config_is_checked_and_pytorch_only_fields_pass(exported, tmp_path, batch, greedy):
    model, _, out = exported
    # a generation_config.json asking for beam search: refused, never silently greedy
    saved = GenerationConfig.from_pretrained(out)
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out)
    ort_model.generation_config = GenerationConfig(**saved.to_diff_dict(), num_beams=4)
    with pytest.raises(ValueError, match="num_beams=4"):
        ort_model.generate(**batch, max_new_tokens=3)
    # fields that only steer PyTorch's cache or compilation change nothing here
    ort_model.generation_config = saved
    got = ort_model.generate(**batch, do_sample=False, max_new_tokens=10, cache_implementation="static",
                             use_cache=True, length_penalty=2.0)
    assert torch.equal(got[:, batch["input_ids"].shape[1]:], greedy)


def test_auto_dtype_loads_the_most_precise_variant_and_logs_it(saved_llava, tmp_path, caplog):
    from hf_llava.onnx import export_onnx

    out = export_onnx(saved_llava, tmp_path / "int8", dtype="int8", validate=False, show_progress=False)
    with caplog.at_level(logging.INFO, logger="hf_llava.onnx"):
        auto = ORTLlavaForConditionalGeneration.from_pretrained(out)
    assert auto.decoder_session._model_path.endswith("onnx/decoder_model_merged.onnx")
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("hf_llava.onnx")]
    assert any("onnx/decoder_model_merged.onnx" in m and "(fp32)" in m and "CPUExecutionProvider" in m
               for m in logged), logged
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_llava.onnx"):
        int8 = ORTLlavaForConditionalGeneration.from_pretrained(out, dtype="int8")
    assert int8.decoder_session._model_path.endswith("onnx/decoder_model_merged_quantized.onnx")
    assert any("onnx/vision_encoder_quantized.onnx" in r.getMessage() for r in caplog.records)
    with pytest.raises(FileNotFoundError, match="fp16"):
        ORTLlavaForConditionalGeneration.from_pretrained(out, dtype="fp16")
    # what eval and serve load: a variant by name; a PyTorch folder has none
    from hf_llava.onnx.loading import load_model

    int8_model, _ = load_model(out, onnx_dtype="int8")
    assert int8_model.decoder_session._model_path.endswith("onnx/decoder_model_merged_quantized.onnx")
    with pytest.raises(ValueError, match="onnx_dtype='int8'.*PyTorch folder"):
        load_model(saved_llava, onnx_dtype="int8")


class RecordingStreamer(BaseStreamer):
    """Keeps every `put` value and counts `end` calls."""

    def __init__(self):
        self.puts, self.ends = [], 0

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ends += 1


class StopRowAfter(StoppingCriteria):
    """Row `row` is done once it has `new_tokens` tokens past the prompt."""

    def __init__(self, row: int, new_tokens: int, prompt_length: int):
        self.row, self.new_tokens, self.prompt_length = row, new_tokens, prompt_length

    def __call__(self, input_ids, scores, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        done[self.row] = input_ids.shape[1] - self.prompt_length >= self.new_tokens
        return done


def test_streamer_gets_the_returned_tokens_with_pytorchs_put_calls(exported, ort_model, batch):
    gen = dict(do_sample=False, max_new_tokens=6)
    streamed = RecordingStreamer()
    got = ort_model.generate(**batch, streamer=streamed, **gen)
    prompt_length = batch["input_ids"].shape[1]
    assert streamed.ends == 1
    assert torch.equal(streamed.puts[0], batch["input_ids"])  # (B, T), left-padded
    assert torch.equal(torch.stack(streamed.puts[1:], dim=1), got[:, prompt_length:])  # one (B,) per step, by row
    expected = RecordingStreamer()
    with torch.no_grad():
        exported[0].generate(**batch, streamer=expected, **gen)
    assert [p.shape for p in streamed.puts] == [p.shape for p in expected.puts]
    assert all(torch.equal(a, b) for a, b in zip(streamed.puts, expected.puts)) and expected.ends == 1


def test_stopping_criteria_finish_a_row_as_pytorch(exported, ort_model, batch, greedy):
    model, prompt_length = exported[0], batch["input_ids"].shape[1]
    pad = model.config.text_config.pad_token_id
    gen = dict(do_sample=False, max_new_tokens=10, pad_token_id=pad)
    stop = StoppingCriteriaList([StopRowAfter(0, 3, prompt_length)])
    streamed = RecordingStreamer()
    got = ort_model.generate(**batch, stopping_criteria=stop, streamer=streamed, **gen)
    new = got[:, prompt_length:]
    assert torch.equal(new[0, :3], greedy[0, :3]) and (new[0, 3:] == pad).all()  # row 0 stopped, then padded
    assert torch.equal(new[1], greedy[1])  # row 1 ran on
    assert torch.equal(torch.stack(streamed.puts[1:], dim=1), new)
    with torch.no_grad():
        assert torch.equal(got, model.generate(**batch, stopping_criteria=stop, **gen))
    # a plain list stopping both rows ends the loop
    both = ort_model.generate(**batch, stopping_criteria=[StopRowAfter(0, 2, prompt_length),
                                                         StopRowAfter(1, 2, prompt_length)], **gen)
    assert torch.equal(both[:, prompt_length:], greedy[:, :2])


def test_stop_strings_stop_rows_as_pytorch(exported, ort_model, batch, greedy, tokenizer):
    model, prompt_length = exported[0], batch["input_ids"].shape[1]
    gen = dict(do_sample=False, max_new_tokens=10, pad_token_id=model.config.text_config.pad_token_id)
    stop = tokenizer.decode(greedy[1, 2:4])  # the text of row 1's third and fourth tokens
    got = ort_model.generate(**batch, stop_strings=[stop], tokenizer=tokenizer, **gen)
    with torch.no_grad():
        assert torch.equal(got, model.generate(**batch, stop_strings=[stop], tokenizer=tokenizer, **gen))
    assert not torch.equal(got[1, prompt_length:], greedy[1]), f"stop string {stop!r} changes nothing"
    with pytest.raises(ValueError, match="tokenizer=processor.tokenizer"):
        ort_model.generate(**batch, stop_strings=[stop], **gen)

"""`hf-llava convert` end to end through `hf_llava.cli.main`."""

import json

import transformers

from hf_llava.cli import main


def test_cli_round_trip(saved_llava, tmp_path, capsys):
    args = ["convert", "--from", "hf-llava", "--to", "llava-hf", str(saved_llava), str(tmp_path / "hf")]
    assert main([*args, "--no-progress"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "llava"
    assert isinstance(transformers.AutoProcessor.from_pretrained(tmp_path / "hf"), transformers.LlavaProcessor)
    assert main(["convert", "--from", "llava-hf", "--to", "hf-llava", str(tmp_path / "hf"), str(tmp_path / "back"),
                 "--chat-template", "llama_2", "--no-progress"]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "hf_llava"
    assert "[INST]" in (tmp_path / "back" / "chat_template.jinja").read_text()
    # An existing DST is refused with a message, not a traceback.
    assert main(["convert", "--from", "hf-llava", "--to", "llava-hf", str(saved_llava), str(tmp_path / "hf")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_next_round_trip_tells_llava_next_by_the_config(saved_next, tmp_path):
    assert main(["convert", "--from", "hf-llava", "--to", "llava-hf", str(saved_next), str(tmp_path / "hf"),
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "llava_next"
    assert isinstance(transformers.AutoProcessor.from_pretrained(tmp_path / "hf"), transformers.LlavaNextProcessor)
    assert main(["convert", "--from", "llava-hf", "--to", "hf-llava", str(tmp_path / "hf"), str(tmp_path / "back"),
                 "--no-progress"]) == 0
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert back == json.loads((saved_next / "config.json").read_text()) and back["image_aspect_ratio"] == "anyres"


def test_cli_original_needs_model_base_for_a_projector(tmp_path, capsys):
    (tmp_path / "stage1").mkdir()
    (tmp_path / "stage1" / "mm_projector.bin").write_bytes(b"")
    code = main(["convert", "--from", "original", "--to", "hf-llava", str(tmp_path / "stage1"), str(tmp_path / "out")])
    assert code == 2 and "--model-base" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_original_full(tmp_path, original_dir, clip_dir):
    out = tmp_path / "converted"
    assert main(["convert", "--from", "original", "--to", "hf-llava", str(original_dir), str(out),
                 "--vision-tower", str(clip_dir), "--no-progress"]) == 0
    assert transformers.AutoModelForImageTextToText.from_pretrained(out).config.image_token_index == 512

"""`hf-llava demo`, the README's main job: builds, saves, reloads through the Auto classes, answers."""

from hf_llava import cli
from hf_llava.demo import run_demo


def test_demo_runs_offline_end_to_end(tmp_path, capsys):
    assert cli.main(["demo", "--output-dir", str(tmp_path / "model"), "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    assert "25 of them visual" in printed
    assert "random weights" in printed
    assert (tmp_path / "model" / "config.json").is_file()
    # the same saved model answers the same way when given explicitly (greedy decoding is deterministic)
    again = run_demo(model_path=str(tmp_path / "model"), max_new_tokens=5)
    assert f"answer     : {again['answer']!r}" in printed


def test_cli_without_a_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "export-onnx" in capsys.readouterr().out

"""`hf-llava`: help that answers at once and shows defaults, errors in two lines with exit code 2."""

import argparse
import subprocess
import sys

import pytest

from hf_llava import cli

HEAVY = ("torch", "transformers", "trl", "onnxruntime", "peft", "datasets", "openai")


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [[], *([name] for name in cli.COMMANDS), ["train", "stage1"], ["train", "stage2"]],
                         ids=lambda argv: " ".join(argv) or "hf-llava")
def test_help_imports_no_heavy_library(argv):
    """`--help` answers at once: no torch / transformers / TRL / ONNX Runtime import behind it."""
    code = (
        "import sys\nfrom hf_llava.cli import main\n"
        f"try:\n    main({argv + ['--help']!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\nassert not loaded, loaded\nprint('HELP OK')"
    )
    result = _run_python(code)
    assert result.returncode == 0 and "HELP OK" in result.stdout, result.stderr[-2000:]
    assert "usage: hf-llava" in result.stdout


def _all_parsers():
    for name in cli.COMMANDS:
        parser = cli.build_parser([name])
        command = parser._subparsers._group_actions[0].choices[name]
        yield name, command
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child_name, child in action.choices.items():
                    yield f"{name} {child_name}", child


@pytest.mark.parametrize("name,parser", list(_all_parsers()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_option_has_help_and_shows_its_default(name, parser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help text"
    text = " ".join(parser.format_help().split())  # unwrapped
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, True, argparse.SUPPRESS):
            flag = max(action.option_strings, key=len)
            shown = text[text.index(flag):]
            assert f"(default: {action.default})" in shown, f"{name}: {flag} does not show its default"


def test_importing_the_package_registers_the_auto_classes_lazily():
    result = _run_python(
        "import sys, hf_llava\nassert 'transformers' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor\n"
        "config = AutoConfig.for_model('hf_llava')\nprint(type(config).__module__)\n"
        "print(AutoModelForImageTextToText._model_mapping[type(config)].__name__)"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["hf_llava.modeling.configuration_llava", "LlavaForConditionalGeneration"]


@pytest.mark.parametrize("argv,needle", [
    (["export-onnx", "{tmp}/missing", "{tmp}/out"], "{tmp}/missing"),
    (["convert", "--from", "llava-hf", "--to", "hf-llava", "{tmp}/missing", "{tmp}/out"], "missing"),
    (["convert", "--from", "original", "--to", "llava-hf", "{tmp}/missing", "{tmp}/out"],
     "--from original --to llava-hf"),
])
def test_bad_input_is_two_lines_exit_2_and_writes_nothing(tmp_path, capsys, cli_error, argv, needle):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    cli_error(err, argv[0])
    assert needle.format(tmp=tmp_path) in "\n".join(err)
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "export-onnx", str(tmp_path / "missing"), str(tmp_path / "out")])


def test_flag_spelling_rewrites_library_parameters():
    parser = cli.build_parser(["convert"])._subparsers._group_actions[0].choices["convert"]
    message = "DST exists; pass overwrite=True, or chat_template='vicuna_v1' with max_shard_size=2GB."
    assert cli._flag_spelling(message, parser) == (
        "DST exists; pass --overwrite, or --chat-template vicuna_v1 with --max-shard-size 2GB."
    )


@pytest.mark.parametrize("command", ["export-onnx", "train"])
def test_a_truncated_weights_file_is_named(tmp_path, saved_llava, capsys, command):
    weights = saved_llava / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    if command == "export-onnx":
        argv = ["export-onnx", str(saved_llava), str(tmp_path / "out")]
    else:
        from tests.trainers.conftest import write_caption_data

        data, folder = write_caption_data(tmp_path)
        argv = ["train", "stage1", "--model", str(saved_llava), "--data", str(data), "--images", str(folder),
                "--output", str(tmp_path / "out")]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and str(weights) in err[0] and "truncated or corrupt" in err[0], err
    assert not (tmp_path / "out").exists()

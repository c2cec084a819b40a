"""`hf-llava train`: the two stages end to end, what a bad input says (and that it writes nothing), the output
folder rule, adapters as --model, and that importing the command stays light."""

import dataclasses
import inspect
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from hf_llava import LlavaForConditionalGeneration, cli
from hf_llava._loading import load_llava_model, resolve_adapter_base

from .conftest import write_caption_data

_FAST = ["--max-steps", "2", "--batch-size", "4", "--logging-steps", "1"]


def _train(stage, model, output, data, images, *extra):
    return cli.main(["train", stage, "--model", str(model), "--output", str(output), "--data", str(data),
                     "--images", str(images), *_FAST, *extra])


def test_stage1_then_stage2_lora_with_relative_paths(tmp_path, saved_llava, monkeypatch, caplog):
    write_caption_data(tmp_path)
    monkeypatch.chdir(tmp_path)  # every path below is relative, as typed in a shell
    with caplog.at_level("INFO"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _train("stage1", "tiny-llava", "out1", "chat.json", "images") == 0
        assert _train("stage2", "out1", "out2", "chat.json", "images", "--lora", "--lora-r", "4", "--lora-alpha", "8",
                      "--merge-lora") == 0
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    assert (out1 / "mm_projector.safetensors").is_file() and (out1 / "config.json").is_file()
    assert (out2 / "adapter_model.safetensors").is_file() and (out2 / "merged" / "model.safetensors").is_file()
    assert f"adapter base model: {out1}" in caplog.text
    noise = [str(w.message) for w in caught if "pin_memory" in str(w.message) or "no longer tied" in str(w.message)]
    assert not noise  # the normal path is quiet (CPU: no pinning; merging: nothing was tied)
    # the adapter names its base by absolute path: it loads from any working directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert json.loads((out2 / "adapter_config.json").read_text())["base_model_name_or_path"] == str(out1)
    assert resolve_adapter_base(out2) == str(out1)
    merged_on_load = load_llava_model(out2, merge_adapter=True)
    merged = LlavaForConditionalGeneration.from_pretrained(out2 / "merged")
    for name, value in merged.state_dict().items():
        assert torch.allclose(merged_on_load.state_dict()[name], value, atol=1e-6), name
    stage1 = LlavaForConditionalGeneration.from_pretrained(out1)
    # the tower's patch embedding (4.57 keeps CLIP's `vision_model.` level in the name, 5.x does not)
    key = next(k for k in stage1.state_dict() if k.endswith("embeddings.patch_embedding.weight"))
    assert torch.equal(merged.state_dict()[key], stage1.state_dict()[key])


def test_adapter_as_model_needs_merge_adapter(tmp_path, saved_llava, capsys):
    path, folder = write_caption_data(tmp_path)
    adapter = tmp_path / "adapter"
    assert _train("stage2", saved_llava, adapter, path, folder, "--lora", "--lora-r", "4", "--lora-alpha", "8") == 0
    capsys.readouterr()
    assert _train("stage1", adapter, tmp_path / "s1", path, folder) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "LoRA adapter" in err[0] and "--merge-adapter" in err[0] and str(adapter) in err[0]
    assert not (tmp_path / "s1").exists()
    # a new adapter needs its base model as a folder
    assert _train("stage2", adapter, tmp_path / "lora2", path, folder, "--lora") == 2
    assert "--merge-lora" in capsys.readouterr().err and not (tmp_path / "lora2").exists()
    assert _train("stage1", adapter, tmp_path / "s1", path, folder, "--merge-adapter") == 0
    assert (tmp_path / "s1" / "mm_projector.safetensors").is_file()


def _bad_sample(path, folder):
    records = json.loads(path.read_text())
    records[3]["conversations"][1]["from"] = "bot"
    path.write_text(json.dumps(records))
    return "unknown role 'bot'"


def _missing_image(path, folder):
    (folder / "5.png").unlink()
    return f"image file missing: '{folder / '5.png'}'"


@pytest.mark.parametrize("breaks, flags", [
    (lambda path, folder: path.unlink() or "no such data file", ["--data"]),
    (_bad_sample, ["--data"]),
    (_missing_image, ["--images", "--bad-image-policy skip"]),
])
def test_bad_data_is_refused_before_the_model_loads(tmp_path, capsys, breaks, flags):
    path, folder = write_caption_data(tmp_path)
    problem = breaks(path, folder)
    # the model folder does not exist: the data must be checked (and refused) first
    code = _train("stage1", tmp_path / "no-model", tmp_path / "out", path, folder)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and 1 <= len(err) <= 2, err
    assert err[0].startswith("hf-llava train: error: --data ") and str(path) in err[0]
    assert problem in err[0] and all(flag in err[0] for flag in flags), err[0]
    assert not (tmp_path / "out").exists()


def test_an_earlier_runs_output_is_refused_unless_overwrite_or_resume(tmp_path, saved_llava, capsys):
    path, folder = write_caption_data(tmp_path)
    out = tmp_path / "out"
    assert _train("stage1", saved_llava, out, path, folder, "--save-steps", "1") == 0
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert _train("stage1", saved_llava, out, path, folder) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and f"--output {out} already holds files" in err[0]
    assert "--resume last" in err[0] and "--overwrite" in err[0]
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written
    assert _train("stage1", saved_llava, out, path, folder, "--resume", "last", "--max-steps", "3") == 0
    assert (out / "checkpoint-3").is_dir()
    assert _train("stage1", saved_llava, out, path, folder, "--overwrite") == 0
    empty = tmp_path / "empty"
    assert _train("stage1", saved_llava, empty, path, folder, "--resume", "last") == 2
    assert "no checkpoint-N folder" in capsys.readouterr().err and not empty.exists()


def test_a_failed_run_leaves_no_output_folder(tmp_path, saved_llava, capsys):
    path, folder = write_caption_data(tmp_path)
    (folder / "0.png").write_bytes(b"\x89PNG broken")  # exists (passes validation), unreadable in training
    out = tmp_path / "new" / "out"
    assert _train("stage1", saved_llava, out, path, folder) == 2
    assert "cannot read its image" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_every_option_has_help_and_defaults_show(capsys):
    parser = cli.build_parser(["train"])
    train = parser._subparsers._group_actions[0].choices["train"]
    stages = train._subparsers._group_actions[0].choices
    for stage in ("stage1", "stage2"):
        assert all(action.help for action in stages[stage]._actions), stage
    with pytest.raises(SystemExit):
        cli.main(["train", "stage1", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: square)" in out and "(default: plain)" in out and "(default: before)" in out


def test_importing_the_command_imports_neither_torch_nor_trl():
    code = "import hf_llava.trainers.cli, sys; assert 'trl' not in sys.modules and 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_stage1_starts_from_a_pretrained_tower_and_lm(tmp_path, pretrained_parts, capsys):
    """The recipe's start: no hf-llava folder yet, only CLIP and an LM; stage 1 builds the LLaVA itself."""
    clip_path, llama_path, clip, _ = pretrained_parts
    data, folder = write_caption_data(tmp_path)
    out = tmp_path / "out1"
    args = ["train", "stage1", "--output", str(out), "--data", str(data), "--images", str(folder), *_FAST]
    assert cli.main([*args, "--vision-tower", str(clip_path), "--language-model", str(llama_path)]) == 0
    model = LlavaForConditionalGeneration.from_pretrained(out)
    assert model.config.base_models == [str(clip_path), str(llama_path)]
    patches = model.vision_tower.get_input_embeddings().weight  # CLIP's patch embedding
    assert torch.equal(patches, clip.vision_model.embeddings.patch_embedding.weight)
    assert (out / "mm_projector.safetensors").is_file() and (out / "processor_config.json").is_file()
    capsys.readouterr()
    # one of the two parts alone, or both ways at once, is refused before anything is written
    assert cli.main([*args[:3], str(tmp_path / "o2"), *args[4:], "--vision-tower", str(clip_path)]) == 2
    assert "--language-model DIR" in capsys.readouterr().err and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_help_defaults_are_the_configs_defaults(stage, tmp_path):
    """One home per number (recipe.py): every flag that sets a config field shows that field's default, and the
    config built from no flags equals the config's own defaults."""
    from hf_llava.trainers import LlavaStage1Config, LlavaStage2Config, lm_lora_config
    from hf_llava.trainers.cli import _config

    config_class = LlavaStage1Config if stage == "stage1" else LlavaStage2Config
    parser = cli.build_parser(["train"])
    stage_parser = parser._subparsers._group_actions[0].choices["train"]._subparsers._group_actions[0].choices[stage]
    fields = {f.name: f.default for f in dataclasses.fields(config_class)}
    flags = {action.dest: action.default for action in stage_parser._actions if action.dest in fields}
    assert {"num_train_epochs", "per_device_train_batch_size", "max_length", "template", "image_aspect_ratio",
            "gradient_checkpointing", "seed"} <= set(flags)
    assert flags == {name: fields[name] for name in flags}
    if stage == "stage2":  # --lora-r / --lora-alpha: the recipe's LoRA values, or QLoRA's with --load-in
        from hf_llava.trainers.recipe import QLORA

        lora = inspect.signature(lm_lora_config).parameters
        helps = {action.dest: action.help for action in stage_parser._actions}
        for name in ("r", "lora_alpha"):
            flag = "lora_r" if name == "r" else name
            assert f"default: {lora[name].default};" in helps[flag] and f"QLoRA's {QLORA[name]}" in helps[flag]
    args = parser.parse_args(["train", stage, "--data", "d.json", "--output", str(tmp_path)])
    built, default = _config(args), config_class(output_dir=str(tmp_path))
    for name in ("learning_rate", "warmup_ratio", "lr_scheduler_type", "weight_decay", *flags):
        assert getattr(built, name) == getattr(default, name), name


_NO_TRAIN_EXTRA = "import sys\nfor name in ('trl', 'peft', 'datasets', 'accelerate'):\n    sys.modules[name] = None\n"


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_train_without_the_train_extra_names_it(stage, tmp_path, cli_error):
    data, images = write_caption_data(tmp_path)
    code = _NO_TRAIN_EXTRA + (
        "from hf_llava.cli import main\n"
        f"sys.exit(main(['train', {stage!r}, '--model', {str(tmp_path / 'm')!r}, '--data', {str(data)!r}, "
        f"'--images', {str(images)!r}, '--output', {str(tmp_path / 'out')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    cli_error(lines, "train")
    assert f"hf-llava train {stage} needs the 'trl' package" in lines[0]
    assert "pip install 'hf-llava[train]'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_merge_adapter_on_a_full_model_is_refused(tmp_path, saved_llava, capsys, cli_error):
    path, folder = write_caption_data(tmp_path)
    assert _train("stage1", saved_llava, tmp_path / "out", path, folder, "--merge-adapter") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    cli_error(lines, "train")
    assert str(saved_llava) in lines[0] and "adapter_config.json" in lines[0] and "--merge-adapter" in lines[0]
    assert not (tmp_path / "out").exists()

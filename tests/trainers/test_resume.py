"""Resume equality, the bad-image policy during training, two processes under accelerate launch."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import TrainerCallback

from hf_llava import LlavaForConditionalGeneration
from hf_llava.data import load_llava_dataset
from hf_llava.trainers import LlavaStage1Config, LlavaStage1Trainer

from .conftest import fast, write_caption_data


def _fresh(config):
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config)


def _projector(model):
    return {k: v.detach().clone() for k, v in model.model.multi_modal_projector.state_dict().items()}


class _StopAt(TrainerCallback):
    """Stops training after `step` (as a killed job would, right after its checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _stage1(model, processor, data, tmp_path, name, callbacks=None, **overrides):
    args = fast(LlavaStage1Config, tmp_path, output_dir=str(tmp_path / name), **overrides)
    return LlavaStage1Trainer(model=model, args=args, train_dataset=data, processing_class=processor,
                              callbacks=callbacks)


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, tiny_config, tiny_processor, caption_data):
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=2)
    full = _fresh(tiny_config)
    _stage1(full, tiny_processor, caption_data, tmp_path, "full", **common).train()
    killed = _fresh(tiny_config)
    _stage1(killed, tiny_processor, caption_data, tmp_path, "run", callbacks=[_StopAt(2)], **common).train()
    assert os.path.isdir(tmp_path / "run" / "checkpoint-2")
    assert os.path.isfile(tmp_path / "run" / "checkpoint-2" / "mm_projector.safetensors")
    assert any(not torch.equal(a, b) for a, b in zip(_projector(killed).values(), _projector(full).values()))
    resumed = _fresh(tiny_config)
    _stage1(resumed, tiny_processor, caption_data, tmp_path, "run", **common).train(
        resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    for name, value in _projector(full).items():
        assert torch.allclose(_projector(resumed)[name], value, rtol=0, atol=1e-7), name


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_image_skip_policy_during_training(tmp_path, tiny_model, tiny_processor, caplog, workers):
    path, folder = write_caption_data(tmp_path)
    data = load_llava_dataset(path, image_folder=folder)
    (folder / "3.png").write_bytes(b"\x89PNG broken")
    trainer = _stage1(tiny_model, tiny_processor, data, tmp_path, "skip", bad_image_policy="skip",
                      dataloader_num_workers=workers)
    with caplog.at_level("WARNING"):
        trainer.train()
    assert trainer.state.global_step == 2
    # counted from the batches, so also when the collator ran in a dataloader worker process
    assert [s[0] for s in trainer._data_skipped] == ["c3"]
    assert "skipped 1 sample(s) with unreadable images" in caplog.text and "3.png" in caplog.text


_SCRIPT = """
import json, os, sys, torch
import hf_llava
from hf_llava import tiny
from hf_llava.data import load_llava_dataset
from hf_llava.trainers import LlavaStage1Config, LlavaStage1Trainer
model, processor = tiny.build_llava()
initial = sum(float(p.detach().double().sum()) for p in model.model.multi_modal_projector.parameters())
data = load_llava_dataset(sys.argv[1], image_folder=sys.argv[2])
args = LlavaStage1Config(output_dir=sys.argv[3], max_steps=2, per_device_train_batch_size=2, save_strategy="no",
                         save_at_end=False, report_to="none", disable_tqdm=True, warmup_ratio=0.0,
                         use_cpu=True)  # without it, transformers sets up no process group on a CUDA-less machine
trainer = LlavaStage1Trainer(model=model, args=args, train_dataset=data, processing_class=processor)
trainer.train()
rank = trainer.accelerator.process_index
total = sum(float(p.detach().double().sum()) for p in model.model.multi_modal_projector.parameters())
with open(os.path.join(sys.argv[3], f"rank{rank}.json"), "w") as f:
    json.dump({"world": trainer.accelerator.num_processes, "sum": total, "initial": initial,
               "step": trainer.state.global_step}, f)
trainer.accelerator.end_training()
# Skip interpreter finalisation: with torch 2.13's gloo backend on CPU, a process-group worker thread that
# touches Python while the interpreter shuts down is force-unwound and aborts the process ("terminate called
# without an active exception", exit -6) in a fraction of runs, after all the work above is done and written.
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
"""


def test_accelerate_launch_two_cpu_processes(tmp_path):
    path, folder = write_caption_data(tmp_path)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    out = tmp_path / "ddp"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    with socket.socket() as probe:  # a free port, so a busy default rendezvous port cannot fail the test
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
               "--dynamo_backend", "no", str(script), str(path), str(folder), str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["step"] == 2 for r in ranks)
    assert ranks[0]["sum"] == ranks[1]["sum"]  # DDP kept the replicas identical
    assert ranks[0]["sum"] != ranks[0]["initial"]  # and they did train

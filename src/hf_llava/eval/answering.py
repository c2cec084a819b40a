"""The model side of every benchmark: answering questions in batches (models load through `onnx.loading`).

`--model` is a saved hf-llava folder (PyTorch) or an `hf-llava export-onnx` folder (ONNX Runtime); both
answer through `.generate(input_ids, attention_mask, pixel_values, max_new_tokens=..., do_sample=False)`, with
everything else the processor returns: a LLaVA-NeXT (AnyRes) processor adds `image_sizes`, and its `pixel_values`
`(images, tiles, C, H, W)` are padded to the batch's largest tile count, so images of any aspect ratio share a batch.
`answer_questions` renders each question with the model's own chat template (image first, as LLaVA's
evaluation does), pads batches on the left and decodes greedily; `JournaledAnswers` adds the answers
journal, so a killed run resumes and a finished one is never generated again.
"""

import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from .._io import Progress, digest, open_journal
from ..onnx.loading import check_model, is_onnx_folder, load_model
from .files import ANSWERS, DIGEST_CHARS, beside
from .inputs import resolve_image

PathLike = Union[str, os.PathLike]


def model_fingerprint(path: PathLike) -> str:
    """The folder and a digest of its files' names, sizes and times: a retrained model is not the same run."""
    path = Path(path).absolute()
    files = []
    for folder in (path, path / "onnx"):
        for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
            if entry.is_file():
                stat = entry.stat()
                files.append(f"{entry.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}\n")
    return f"{path} ({digest(''.join(files), 12)})"


def _prompt(processor, question: dict, with_image: bool) -> str:
    text = question["text"].replace(processor.image_token, "").strip()  # the template places the image
    content = [{"type": "image"}] * with_image + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def answer_questions(model, processor, questions: Sequence[dict], images_root: Optional[PathLike] = None,
                     batch_size: int = 8, max_new_tokens: int = 128, *, progress: bool = True,
                     on_batch: Optional[Callable[[int, list[str]], None]] = None,
                     desc: str = "answering") -> list[str]:
    """Greedy answers, one per question, in order.

    Each question is a dict with `text` (the user's message) and optionally `image`: a file name under
    `images_root`, a path, or an image object (PIL, array). `model` is a `LlavaForConditionalGeneration`
    or an `ORTLlavaForConditionalGeneration`. `on_batch(start, answers)` is called after each batch.
    """
    import torch

    from ..processing import load_image

    if batch_size <= 0 or max_new_tokens <= 0:
        raise ValueError(f"batch_size={batch_size}, max_new_tokens={max_new_tokens}: both must be positive.")
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues at every row's right end
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = getattr(model, "device", None)  # the ONNX model takes CPU tensors
    answers: list[str] = []
    try:
        with Progress(len(questions), desc, "questions", enabled=progress) as bar:
            for start in range(0, len(questions), batch_size):
                batch = questions[start:start + batch_size]
                images = [load_image(resolve_image(q["image"], images_root), start + i)
                          for i, q in enumerate(batch) if q.get("image") is not None]
                prompts = [_prompt(processor, q, q.get("image") is not None) for q in batch]
                inputs = processor(images=images or None, text=prompts, padding=True, return_tensors="pt")
                if device is not None:
                    inputs = inputs.to(device)
                with torch.inference_mode():
                    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                            pad_token_id=pad_id)
                new_tokens = output[:, inputs["input_ids"].shape[1]:]  # (B, generated)
                texts = [t.strip() for t in processor.batch_decode(new_tokens, skip_special_tokens=True)]
                answers += texts
                if on_batch is not None:
                    on_batch(start, texts)
                bar.update(len(batch))
    finally:
        tokenizer.padding_side = side
    return answers


class JournaledAnswers:
    """Answers for `questions` kept in `REPORT.answers.jsonl`: only the missing ones are ever generated.

    Creating it checks the journal (another run's is refused unless `overwrite`) and writes nothing;
    `generate(...)` loads the model only when an answer is missing, journals each batch as it comes and
    returns `{str(question_id): answer}`. `summary` says how many were generated and reused. With `quantization`
    (a `BitsAndBytesConfig`) the model loads in 4 / 8 bits, and the journal is that quantised model's.
    """

    def __init__(self, model_path: PathLike, questions: list[dict], output: Path, *, max_new_tokens: int = 128,
                 overwrite: bool = False, quantization=None):
        self.model_path, self.questions, self.max_new_tokens = model_path, questions, max_new_tokens
        self.quantization = quantization
        if quantization is not None and is_onnx_folder(model_path):
            raise ValueError(f"model={model_path} is an ONNX export; 4 / 8-bit loading (--load-in, bitsandbytes) "
                             "quantises PyTorch weights: pass the PyTorch folder it was exported from.")
        inputs = [[str(q["question_id"]), q["text"], str(q["image"])] for q in questions]
        self.run = {"model": model_fingerprint(model_path), "max_new_tokens": max_new_tokens,
                    "inputs": digest(inputs, DIGEST_CHARS)}
        if quantization is not None:  # a 4 / 8-bit model answers differently: its own journal
            self.run["quantization"] = quantization.to_json_string(use_diff=True)
        self.path = beside(output, ANSWERS)
        self.journal, self.fresh = open_journal(self.path, self.run, overwrite=overwrite, output=output)
        done = self.journal.results(ANSWERS)
        self.pending = [q for q in questions if str(q["question_id"]) not in done]
        self.summary: dict = {}

    def generate(self, *, images_root: Optional[PathLike] = None, batch_size: int = 8, device: Optional[str] = None,
                 merge_adapter: bool = False, progress: bool = True) -> dict[str, str]:
        start = time.perf_counter()
        if self.pending:
            model, processor = load_model(self.model_path, device, merge_adapter,
                                          quantization_config=self.quantization)
            self.journal.start(self.run, fresh=self.fresh)
            pending = self.pending

            def keep(offset: int, texts: list[str]) -> None:
                for q, text in zip(pending[offset:], texts):
                    self.journal.append(str(q["question_id"]), ANSWERS, {"text": text})

            try:
                answer_questions(model, processor, pending, images_root, batch_size, self.max_new_tokens,
                                 progress=progress, on_batch=keep)
            finally:
                self.journal.close()
        self.summary = {"file": str(self.path), "generated": len(self.pending),
                        "reused": len(self.questions) - len(self.pending), "max_new_tokens": self.max_new_tokens,
                        "seconds": round(time.perf_counter() - start, 2)}
        self.pending = []
        return {key: value["text"] for key, value in self.journal.results(ANSWERS).items()}


__all__ = ["JournaledAnswers", "answer_questions", "check_model", "is_onnx_folder", "load_model", "model_fingerprint"]

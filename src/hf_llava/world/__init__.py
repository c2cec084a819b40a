"""The demo's embedded world: synthetic scenes, questions about them, an offline teacher, pretrained parts.

- `scenes`: pictures of 1-4 shapes drawn with PIL, their captions and boxes (datagen's input layout);
- `questions`: VQA questions with one right answer and a `type` (colour, shape, count, position, yes/no), in
  the training data's wordings or in held-out ones;
- `splits`: held-out scenes, drawn so that none shows what a pretraining, training or prompt scene shows;
- `teacher`: `WorldTeacher`, a text-only datagen teacher that writes replies from captions and boxes;
- `pretrained/`: a small CLIP vision tower and a small Llama LM with its tokenizer, trained on this world
  (by `scripts/pretrain_world.py`) and shipped as package data: `vision_tower_path()`, `language_model_path()`;
  and the demo's stage 1 + stage 2 LLaVA built from them (by `scripts/train_chat_model.py`), the chat model
  `hf-llava serve` and `hf-llava chat` use by default: `chat_model_path()`, with `example_images()` (held-out
  pictures and a question each).
Names load on first use.
"""

from .._lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "QUESTION_TYPES": ".questions",
    "WorldTeacher": ".teacher",
    "chat_model_path": ".parts",
    "example_images": ".parts",
    "language_model_path": ".parts",
    "make_questions": ".questions",
    "make_scenes": ".scenes",
    "vision_tower_path": ".parts",
    "write_scenes": ".scenes",
})

__all__ = ["QUESTION_TYPES", "WorldTeacher", "chat_model_path", "example_images", "language_model_path",
           "make_questions", "make_scenes", "vision_tower_path", "write_scenes"]

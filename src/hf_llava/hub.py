"""Sharing on the Hugging Face Hub: a model card with the right metadata, and one-call upload.

`push_to_hub` saves model and processor into a temporary folder, writes `README.md` (metadata:
`pipeline_tag: image-text-to-text`, `library_name: transformers`, `base_model`, tags) and uploads the
folder in one commit, so the repository never holds a model without its processor or card.
"""

import os
import tempfile
from typing import Optional

from huggingface_hub import HfApi, ModelCard, ModelCardData

_CARD_BODY = """
# {title}

A LLaVA model (vision tower + projector + causal LM) built with
[hf-llava](https://pypi.org/project/hf-llava/).

| part | value |
|---|---|
| vision tower | `{vision}` |
| projector | `{projector}` |
| language model | `{text}` |
| visual tokens per image | {tokens} |

## Use

```python
import hf_llava  # registers the classes; or pass trust_remote_code=True without hf-llava installed
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo_id}")
processor = AutoProcessor.from_pretrained("{repo_id}")
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is shown?"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=image, text=prompt, return_tensors="pt")
print(processor.decode(model.generate(**inputs, max_new_tokens=64)[0], skip_special_tokens=True))
```
"""


def build_model_card(config, repo_id: str, base_models: Optional[list[str]] = None) -> ModelCard:
    """The model card of an hf-llava checkpoint, with Hub metadata derived from `config`."""
    base_models = list(base_models or getattr(config, "base_models", None) or [])
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=["hf-llava", "llava", "vision-language", "image-text-to-text"],
        base_model=base_models or None,
        license=getattr(config, "license", None),
    )
    body = _CARD_BODY.format(
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        vision=config.vision_config.model_type,
        projector=config.projector_type,
        text=config.text_config.model_type,
        tokens=config.image_seq_length,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_model_card(save_directory: str, config, repo_id: Optional[str] = None, base_models=None) -> str:
    """Writes `README.md` into `save_directory` (see `build_model_card`); returns its path."""
    repo_id = repo_id or os.path.basename(os.path.abspath(save_directory))
    path = os.path.join(save_directory, "README.md")
    build_model_card(config, repo_id, base_models).save(path)
    return path


def push_to_hub(
    repo_id: str,
    model=None,
    processor=None,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    commit_message: str = "Upload hf-llava model",
    commit_description: Optional[str] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    base_models: Optional[list[str]] = None,
    max_shard_size: str = "5GB",
    safe_serialization: bool = True,
):
    """Uploads `model` and/or `processor` with a model card to `repo_id` in one commit; returns the commit info."""
    if model is None and processor is None:
        raise ValueError("push_to_hub needs a model, a processor or both.")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        if model is not None:
            model.save_pretrained(folder, max_shard_size=max_shard_size, safe_serialization=safe_serialization)
        if processor is not None:
            processor.save_pretrained(folder)
        if model is not None:
            write_model_card(folder, model.config, repo_id, base_models)
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message,
            commit_description=commit_description, revision=revision, create_pr=create_pr,
        )


__all__ = ["build_model_card", "push_to_hub", "write_model_card"]

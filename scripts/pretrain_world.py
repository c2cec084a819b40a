"""Pretrain the demo world's components, as LLaVA starts from pretrained CLIP and Vicuna.

Writes, by default into the package (`src/hf_llava/world/pretrained/`):
  vision_tower/    a CLIPVisionModel + CLIPImageProcessor: the vision half of a small CLIP trained
                   contrastively on world pictures and their captions (its text half is dropped);
  language_model/  a LlamaForCausalLM + tokenizer: a byte-level BPE tokenizer trained on the world's text
                   (captions, descriptions, questions, the chat prompt), and an LM trained on short pages
                   about pictures: descriptions, then questions answered in sentences. Most of its pages
                   show a picture "in shorthand" instead (`world_probes.py`, beside this script): four input
                   positions, one per quadrant in reading order, each the mean of the embeddings of the
                   words that say what is there ("large red circle", "empty"), the interface LLaVA's
                   projector would ideally learn to feed from the pixels in stage 1. Such a page is, in
                   equal shares: a caption in stage 1's `plain` layout (picture, caption, newline); a
                   `vicuna_v1` chat answered in sentences (as Vicuna is a chat model); questions answered in
                   sentences; or in one word or phrase after LLaVA-1.5's short-answer instruction (never in
                   the chat layout: that is stage 2's to teach).
                   The LM never sees a picture.
Seeded and deterministic on a given machine and torch build. Measured on 2 CPU cores:
the vision tower 3 minutes, the LM 33 minutes (`--parts` re-trains one; `--help` for the sizes). Run from
the repository root:

    python scripts/pretrain_world.py            # replaces the shipped components
    python scripts/pretrain_world.py --output /tmp/parts
"""

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionModel, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # the normalisation real towers use

from hf_llava._io import atomic_folder
from hf_llava.processing.chat_templates import VICUNA_SYSTEM
from hf_llava.world.parts import LANGUAGE_MODEL, VISION_TOWER, pretrained_root
from hf_llava.world.questions import QUESTION_TYPES, ask
from hf_llava.world.scenes import Scene, captions, draw, make_scenes
from hf_llava.world.splits import PRETRAIN_SCENES, PRETRAIN_SEED, PRETRAIN_SPLIT, near_misses, vision_rng
from hf_llava.world.teacher import write_detail
from world_probes import (IMAGE, chat_text, collate_shorthand, context_qa_with_control, encode_shorthand, qa_text,
                          shorthand_embeds, shorthand_id, shorthand_qa)

SPLIT = PRETRAIN_SPLIT  # scene ids of their own; the demo holds its test scenes out of these by content


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", default=str(pretrained_root()), help="folder for vision_tower/ and language_model/")
    parser.add_argument("--seed", type=int, default=PRETRAIN_SEED,
                        help="seeds the scenes, the initialisation and the batches")
    parser.add_argument("--scenes", type=int, default=PRETRAIN_SCENES,
                        help="world pictures and caption sets to train on")
    parser.add_argument("--image-size", type=int, default=32, help="the vision tower's input size (pixels)")
    parser.add_argument("--patch-size", type=int, default=16,
                        help="ViT patch size: (image/patch)^2 visual tokens (32/16: one per quadrant)")
    parser.add_argument("--vision-hidden", type=int, default=96, help="vision tower width")
    parser.add_argument("--vision-layers", type=int, default=3, help="vision tower depth")
    parser.add_argument("--clip-steps", type=int, default=1500, help="contrastive training steps")
    parser.add_argument("--clip-batch", type=int, default=128, help="pictures per contrastive batch")
    parser.add_argument("--vocab-size", type=int, default=640, help="tokenizer vocabulary (256 bytes + merges)")
    parser.add_argument("--lm-hidden", type=int, default=128, help="LM width")
    parser.add_argument("--lm-layers", type=int, default=3, help="LM depth")
    parser.add_argument("--lm-steps", type=int, default=7000, help="LM training steps")
    parser.add_argument("--lm-batch", type=int, default=8, help="text documents per LM batch")
    parser.add_argument("--lm-shorthand-batch", type=int, default=32,
                        help="shorthand-picture documents per LM batch (besides the text ones)")
    parser.add_argument("--lm-lr", type=float, default=1e-3, help="LM peak learning rate (cosine schedule)")
    parser.add_argument("--parts", nargs="+", choices=(VISION_TOWER, LANGUAGE_MODEL),
                        default=[VISION_TOWER, LANGUAGE_MODEL], help="which components to (re)train")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def world_text(scenes, seed: int) -> tuple[list[str], list[str]]:
    """`(documents, extra)`: the LM's text and what the tokenizer must also cover (the chat prompt, LLaVA-1.5's
    short-answer instruction). A document reads like a short page about one picture: a full description of it
    (a caption that places every shape, or the detailed description), a shorter caption, then three questions
    about it answered in sentences; so the LM learns to answer from what the text before says, as Vicuna
    answers from its context (the shorthand pages, `shorthand_documents`, add the other layouts)."""
    documents, extra = [], [VICUNA_SYSTEM, "USER: ASSISTANT:"]
    for scene in scenes:
        rng = random.Random(f"{seed}:{scene.id}")
        lines = captions(scene, rng)
        full = rng.choice([lines[0], lines[2], write_detail(lines, list(scene.shapes), rng)])
        qas = [qa for kind in rng.sample(QUESTION_TYPES, len(QUESTION_TYPES)) if (qa := ask(scene.shapes, kind, rng))]
        documents.append(" ".join([full, rng.choice([lines[1], lines[3]])]
                                  + [f"Question: {qa.question} Answer: {qa.sentence}" for qa in qas[:3]]))
        extra.append(" ".join(f"{qa.short_prompt()} {qa.answer}" for qa in qas[:1]))
    return documents, extra


SHORTHAND_PAGES = ("plain caption", "chat", "sentences", "short answers")


def shorthand_documents(scenes, tokenizer, seed: int) -> list[tuple[Scene, str]]:
    """`(scene, text)` per scene: a page about the scene's picture in shorthand (`IMAGE` marks where it goes),
    one of `SHORTHAND_PAGES` in turn: one of its captions in stage 1's `plain` layout; a `vicuna_v1` chat of one
    to three questions answered in sentences (rendered by `tokenizer` with the template); (a third of the time) a
    caption, else a question of every type in a random order, answered in sentences; or the same questions
    answered in one word or phrase after LLaVA-1.5's short-answer instruction."""
    documents = []
    for k, scene in enumerate(scenes):
        rng = random.Random(f"shorthand:{seed}:{scene.id}")
        page = SHORTHAND_PAGES[k % len(SHORTHAND_PAGES)]
        qas = [qa for kind in rng.sample(QUESTION_TYPES, len(QUESTION_TYPES)) if (qa := ask(scene.shapes, kind, rng))]
        if page == "plain caption":
            text = IMAGE + rng.choice(captions(scene, rng)) + "\n"
        elif page == "chat":
            text = chat_text(tokenizer, [(qa.question, qa.sentence) for qa in qas[:rng.randint(1, 3)]])
        elif page == "sentences" and rng.random() < 1 / 3:
            text = f"{IMAGE} {rng.choice(captions(scene, rng))}</s>"
        elif page == "sentences":
            text = " ".join([IMAGE] + [qa_text(qa.question, qa.sentence) for qa in qas]) + "</s>"
        else:
            text = " ".join([IMAGE] + [qa_text(qa.short_prompt(), qa.answer + ".") for qa in qas]) + "</s>"
        documents.append((scene, text))
    return documents


class ShorthandLM(torch.nn.Module):
    """The LM reading input ids where each `image_id` (the tokenizer's `<image>`) is replaced by the mean embedding
    of a phrase's tokens (`phrase_ids` `(B, 4, L)`, `phrase_mask` marks the real ones); text documents have none."""

    def __init__(self, lm: LlamaForCausalLM, image_id: int):
        super().__init__()
        self.lm = lm
        self.image_id = image_id

    def forward(self, input_ids, attention_mask, labels, phrase_ids, phrase_mask):
        return self.lm(inputs_embeds=shorthand_embeds(self.lm, input_ids, phrase_ids, phrase_mask, self.image_id),
                       attention_mask=attention_mask,
                       labels=labels)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Llama's special tokens (`<unk>` 0, `<s>` 1, `</s>` 2) and two reserved ones, `<pad>` 3
    and `<image>` 4 (as llava-hf's tokenizers carry them, so LLaVA needs no new embedding rows); `<s>` starts
    every text."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=["<image>"],
                                   model_max_length=512, model_input_names=["input_ids", "attention_mask"])


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _train(model, batches, steps: int, lr: float, desc: str, every: int = 0, probe=None) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, steps, steps // 20))
    losses = []
    model.train()
    with tqdm(range(steps), desc=desc) as bar:
        for _ in bar:
            loss = model(**next(batches)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if probe is not None and every and len(losses) % every == 0:
                model.eval()
                bar.write(f"step {len(losses)}: {probe()}")
                model.train()
    return losses


class _Clip(torch.nn.Module):
    """CLIP's symmetric contrastive loss, with the picture pooled as the mean of its patch tokens (SigLIP pools
    the patches too, by attention) rather than from the class token: each patch token must then carry what is
    in its quadrant and where, which is what LLaVA reads (the patch tokens of a hidden layer)."""

    def __init__(self, clip: CLIPModel):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values, input_ids, attention_mask):
        clip = self.clip
        patches = clip.vision_model(pixel_values=pixel_values).last_hidden_state[:, 1:]
        image = clip.visual_projection(clip.vision_model.post_layernorm(patches.mean(1)))
        text = clip.text_projection(clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        logits = clip.logit_scale.exp() * text @ image.T
        targets = torch.arange(len(logits))
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        return type("ClipOutput", (), {"loss": loss})()


def pretrain_vision(scenes, tokenizer, args, rng: random.Random) -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    size = args.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                         image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    half = len(scenes) // 2  # scene i of the second half is a near miss of scene i of the first
    scenes = scenes[:half] + near_misses(scenes[:half], rng)
    pixels = torch.cat([image_processor([draw(s) for s in scenes[i:i + 512]], return_tensors="pt")["pixel_values"]
                        for i in range(0, len(scenes), 512)])  # (N, 3, size, size)
    # The text tower reads the LM tokenizer's ids and ends every caption with one id of its own (CLIP pools there).
    end_id = len(tokenizer)
    texts = [[captions(s, random.Random(f"{args.seed}:{s.id}"))[k] for k in (0, 2)] for s in scenes]
    encoded = [[tokenizer(t, add_special_tokens=False)["input_ids"] + [end_id] for t in pair] for pair in texts]
    max_len = max(len(ids) for pair in encoded for ids in pair)
    config = CLIPConfig(
        vision_config=dict(image_size=size, patch_size=args.patch_size, hidden_size=args.vision_hidden,
                           intermediate_size=4 * args.vision_hidden, num_hidden_layers=args.vision_layers,
                           num_attention_heads=4),
        text_config=dict(vocab_size=end_id + 1, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=max_len, eos_token_id=end_id,
                         pad_token_id=end_id, bos_token_id=tokenizer.bos_token_id),
        projection_dim=64,
    )
    clip = CLIPModel(config)

    def batches():
        while True:
            first = rng.sample(range(half), args.clip_batch // 2)
            idx = first + [i + half for i in first]  # every scene with its near miss
            ids = torch.full((len(idx), max_len), end_id)
            mask = torch.zeros((len(idx), max_len), dtype=torch.long)
            for row, i in enumerate(idx):
                caption = encoded[i][rng.randrange(2)]
                ids[row, :len(caption)] = torch.tensor(caption)
                mask[row, :len(caption)] = 1
            yield {"pixel_values": pixels[idx], "input_ids": ids, "attention_mask": mask}

    _train(_Clip(clip), batches(), args.clip_steps, 2e-3, "CLIP (contrastive)")
    tower = CLIPVisionModel(config.vision_config)
    # transformers 4.57 nests the tower's modules under `vision_model`; 5.x's CLIPVisionModel holds them itself
    getattr(tower, "vision_model", tower).load_state_dict(clip.vision_model.state_dict())
    return tower, image_processor


def _collate(rows: list[tuple[list[int], list[list[int]]]], image_id: int) -> dict:
    """A training batch: ids right-padded; labels: every token but the padding and the shorthand positions."""
    batch = collate_shorthand(rows, pad_id=0)
    labels = batch["input_ids"].masked_fill((batch["attention_mask"] == 0) | (batch["input_ids"] == image_id), -100)
    return {**batch, "labels": labels}


def pretrain_language(documents: list[str], shorthand: list, tokenizer, args, rng: random.Random) -> ShorthandLM:
    encoded = [tokenizer(d)["input_ids"] + [tokenizer.eos_token_id] for d in documents]
    pictures = [encode_shorthand(tokenizer, scene, text) for scene, text in shorthand]
    max_len = max(len(ids) for ids in encoded)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.lm_hidden, intermediate_size=4 * args.lm_hidden,
                         num_hidden_layers=args.lm_layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    image_id = shorthand_id(tokenizer)
    model = ShorthandLM(LlamaForCausalLM(config), image_id)

    def batches():
        while True:
            text = [(encoded[i], []) for i in rng.sample(range(len(encoded)), args.lm_batch)]
            short = [pictures[i] for i in rng.sample(range(len(pictures)), args.lm_shorthand_batch)]
            yield _collate(text + short, image_id)

    print(f"LM documents: {len(encoded)} text (longest {max_len} tokens), {len(pictures)} shorthand pictures")
    _train(model, batches(), args.lm_steps, args.lm_lr, "LM (next token)", every=1000,
           probe=lambda: shorthand_qa(model.lm, tokenizer, count=60, seed=args.seed))
    return model


def _scores(read: dict) -> str:
    """`80.4% (colour 93.0%, shape 98.0%, ...)`: a probe's accuracy, then per question type."""
    return f"{read['accuracy']}% ({', '.join(f'{k} {v}%' for k, v in read['per_type'].items())})"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    scenes = make_scenes(args.scenes, args.seed, SPLIT)
    documents, extra = world_text(scenes, args.seed)
    tokenizer = train_tokenizer(documents + extra, args.vocab_size)
    print(f"tokenizer: {len(tokenizer)} tokens; the chat system prompt is "
          f"{len(tokenizer(VICUNA_SYSTEM)['input_ids'])} tokens")
    output = Path(args.output)
    for part in args.parts:  # each part seeded on its own, so either can be re-run alone
        torch.manual_seed(args.seed)
        if part == VISION_TOWER:
            pieces = pretrain_vision(scenes, tokenizer, args, vision_rng(args.seed))
        else:
            shorthand = shorthand_documents(scenes, tokenizer, args.seed)
            lm = pretrain_language(documents, shorthand, tokenizer, args, random.Random(args.seed)).eval()
            read, control = context_qa_with_control(lm.lm, tokenizer, seed=args.seed)
            print(f"LM answers questions about the caption in its context: {_scores(read)}; "
                  f"after another picture's caption: {control['accuracy']}%")
            for name, kwargs in (("in sentences", {}), ("in one word or phrase", {"short": True}),
                                 ("in sentences, in the chat layout", {"layout": "chat"})):
                read = shorthand_qa(lm.lm, tokenizer, seed=args.seed, **kwargs)
                print(f"LM answers questions about a picture in shorthand {name}: {_scores(read)}")
            pieces = (lm.lm, tokenizer)
        with atomic_folder(output / part) as staging:  # an interrupted run never leaves half a part
            for piece in pieces:
                piece.save_pretrained(staging)
    size = sum(f.stat().st_size for f in output.rglob("*.safetensors")) / 2**20
    print(f"wrote {output} ({size:.1f} MB of safetensors) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

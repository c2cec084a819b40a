"""`hf-llava datagen`: the arguments of a data generation run and the call into `hf_llava.datagen`."""

import argparse
import sys

from ..teachers import add_teacher_arguments, teacher_settings

_DEFAULT_TYPES = "conversation,detail,complex"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Declare the `datagen` sub-command's arguments."""
    source = parser.add_argument_group("input (one of)")
    source.add_argument("--input", metavar="FILE",
                        help="captions + boxes JSONL, one image a line: {id, image, captions, "
                        "instances: [{category, bbox: [x1, y1, x2, y2] in 0-1]}")
    source.add_argument("--coco-instances", metavar="FILE", help="COCO instances_*.json (pixel [x, y, w, h] boxes)")
    source.add_argument("--coco-captions", metavar="FILE", help="COCO captions_*.json of the same split")
    parser.add_argument("--types", metavar="T1,T2", default=_DEFAULT_TYPES,
                        help="comma-separated: conversation, detail, complex")
    parser.add_argument("--output", metavar="FILE",
                        help="LLaVA JSON to write; its journal OUTPUT.journal.jsonl makes reruns resume")
    teacher = parser.add_argument_group("teacher: an OpenAI-compatible server (--base-url) or --local-model")
    add_teacher_arguments(teacher)
    teacher.add_argument("--local-model", metavar="DIR", help="folder of a transformers chat LM, run here in batches")
    parser.add_argument("--model", metavar="NAME",
                        help="model name on the server (required with --base-url; with --local-model: a label)")
    parser.add_argument("--prompts", metavar="DIR",
                        help="folder with conversation.json / detail.json / complex.json to use instead of ours")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (--local-model)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy)")
    parser.add_argument("--max-tokens", type=int, default=1024, help="longest reply, in tokens")
    parser.add_argument("--limit", type=int, metavar="N", help="use only the first N images")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the image position, the detail instructions and local sampling")
    parser.add_argument("--dry-run", action="store_true", help="print one rendered prompt per type; send nothing")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an OUTPUT that is not this run's, and its journal (a run with the same inputs "
                        "and settings always resumes)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (in a log, where stderr is not a terminal: no progress lines)")


def _print_prompts(rendered: dict) -> None:
    for kind, messages in rendered.items():
        print(f"===== {kind}: {len(messages)} messages =====")
        for message in messages:
            print(f"--- {message['role']} ---\n{message['content']}")
        print()


def _teacher(args: argparse.Namespace):
    """The teacher the flags name (cheap: a local model loads on its first request)."""
    from ..teachers import LocalTeacher, OpenAITeacher

    if (args.base_url is None) == (args.local_model is None):
        raise ValueError("name one teacher: base_url=URL with model=NAME (an OpenAI-compatible server) or "
                         "local_model=DIR.")
    if args.base_url is not None:
        if not args.model:
            raise ValueError(f"base_url={args.base_url} needs model=NAME (the model the server serves).")
        return OpenAITeacher(args.base_url, args.model, temperature=args.temperature, max_tokens=args.max_tokens,
                             **teacher_settings(args))
    return LocalTeacher(args.local_model, batch_size=args.batch_size, max_tokens=args.max_tokens,
                        temperature=args.temperature, seed=args.seed, name=args.model)


def run(args: argparse.Namespace) -> int:
    """Generate (or, with --dry-run, show the prompts); errors raise (the CLI prints them in two lines)."""
    from ..teachers import TeacherUnavailable
    from . import runner

    sources = dict(input=args.input, coco_instances=args.coco_instances, coco_captions=args.coco_captions)
    if args.dry_run:
        _print_prompts(runner.dry_run(types=args.types, prompts=args.prompts, **sources))
        return 0
    if not args.output:
        raise ValueError("no output: pass output=FILE (the LLaVA JSON to write), or --dry-run to see the prompts.")
    teacher = _teacher(args)  # cheap; `generate` checks every input before the first request
    kept = f"the samples so far are kept in {runner.journal_path(args.output)}: run the same command again to resume"
    try:
        summary = runner.generate(teacher, args.output, types=args.types, prompts=args.prompts, limit=args.limit,
                                  seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress, **sources)
    except KeyboardInterrupt:
        print(f"hf-llava datagen: interrupted; {kept}.", file=sys.stderr)
        return 130
    except TeacherUnavailable as error:  # the server cannot answer: one message, not a line per request
        raise TeacherUnavailable(f"{error}\n{kept[0].upper()}{kept[1:]}.") from None
    print(summary.format())
    if summary.output is None:
        print(f"No sample was accepted; nothing written (the warnings above say why). Journal: {summary.journal}",
              file=sys.stderr)
        return 1
    print(f"Wrote {summary.samples} samples to {summary.output} (journal: {summary.journal})")
    return 0

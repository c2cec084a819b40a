"""`hf-llava eval llava-bench | vqa | multiple-choice`: the arguments of each benchmark and the call into it."""

import argparse
import os
import sys

from .._cli_args import add_parser, add_quantization_arguments, quantization_config
from ..teachers import add_teacher_arguments, teacher_settings


def _common(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument("--model", metavar="DIR", required=True,
                        help="a saved hf-llava folder, or a folder written by `hf-llava export-onnx`")
    parser.add_argument("--questions", metavar="FILE", required=True, help="questions JSONL, one question a line")
    parser.add_argument("--images", metavar="DIR",
                        help="folder the questions' `image` names are relative to (default: the questions' folder)")
    parser.add_argument("--output", metavar="FILE", required=True,
                        help="report JSON to write; the answers go beside it (REPORT.answers.jsonl), and a rerun "
                        "reuses them")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per generate call (left padding)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="longest answer, in tokens")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="where the model runs (default: cuda when available; ONNX: the CPU provider)")
    parser.add_argument("--merge-adapter", action="store_true",
                        help="--model is a LoRA adapter folder: merge it into its base model first")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing report, and journals beside it from another model or judge")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (in a log, where stderr is not a terminal: no progress lines)")
    add_quantization_arguments(parser)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Declare `eval` and its three sub-commands."""
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    bench = add_parser(sub, "llava-bench", "LLaVA-Bench: a text-only judge scores the model against reference "
                       "answers (relative score)")
    _common(bench, max_new_tokens=1024)
    bench.add_argument("--references", metavar="FILE", required=True,
                       help="reference answers JSONL ({question_id, text}), e.g. qa90_gpt4_answer.jsonl")
    bench.add_argument("--context", metavar="FILE", required=True,
                       help="image contexts JSONL keyed by `image`: captions + instances boxes, or a caption")
    judge = bench.add_argument_group("judge (an OpenAI-compatible server)")
    add_teacher_arguments(judge, required=True, role="judge")
    judge.add_argument("--judge-model", metavar="NAME", required=True, help="the judge model's name on the server")
    judge.add_argument("--review-retries", type=int, default=3,
                       help="times a review whose first line is not two scores is asked again")
    judge.add_argument("--temperature", type=float, default=0.2, help="the judge's sampling temperature")
    judge.add_argument("--judge-max-tokens", type=int, default=1024, help="longest review, in tokens")

    vqa = add_parser(sub, "vqa", "VQA accuracy: short answers against human answers (normalised, min(#matches/3, 1))")
    _common(vqa, max_new_tokens=128)
    choice = add_parser(sub, "multiple-choice", "ScienceQA-style accuracy: choices as letters, the letter parsed")
    _common(choice, max_new_tokens=128)


def _model_args(args: argparse.Namespace) -> dict:
    return dict(images=args.images, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                device=args.device, merge_adapter=args.merge_adapter, overwrite=args.overwrite,
                progress=not args.no_progress, quantization=quantization_config(args, args.device))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print its table and where the report is; errors raise (the CLI prints them)."""
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) <= 0:
            raise ValueError(f"{name}={getattr(args, name)}: must be positive.")
    from ..teachers import TeacherUnavailable  # light: the client (openai) loads when a teacher is made

    kept = f"the answers and reviews so far are kept beside {args.output}: run the same command again to resume"
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"hf-llava eval: interrupted; {kept}.", file=sys.stderr)
        return 130
    except TeacherUnavailable as error:  # the judge's server cannot answer: one message, not a line per review
        raise TeacherUnavailable(f"{error}\n{kept[0].upper()}{kept[1:]}.") from None


def _run(args: argparse.Namespace) -> int:
    if args.benchmark == "llava-bench":
        from .._extras import require
        from .._io import listed
        from ..teachers import OpenAITeacher
        from .llava_bench import format_scores, run_llava_bench

        require("openai", "teacher", "the LLaVA-Bench judge")  # before any model time
        if not args.judge_model.strip():
            raise ValueError("--judge-model is empty: name the model the judge server serves.")
        judge = OpenAITeacher(args.base_url, args.judge_model, temperature=args.temperature,
                              max_tokens=args.judge_max_tokens, **teacher_settings(args))
        report = run_llava_bench(args.model, args.questions, args.references, args.context, args.output, judge,
                                 review_retries=args.review_retries, **_model_args(args))
        print(format_scores(report))
        if report["failed"]:
            ids = listed([f["question_id"] for f in report["failed"]], 20)
            print(f"{len(report['failed'])} review(s) failed and are left out of the scores: question_id {ids}")
        if not report["scores"]["all"]["n"]:  # no score at all is a failed run, not a table of dashes
            print(f"No review could be scored (the report's 'failed' says why): {os.path.abspath(args.output)}",
                  file=sys.stderr)
            return 1
    else:
        from .report import accuracy_rows

        if args.benchmark == "vqa":
            from .vqa import run_vqa as runner
        else:
            from .multiple_choice import run_multiple_choice as runner
        report = runner(args.model, args.questions, args.output, **_model_args(args))
        print(accuracy_rows(report, {"with image": report["image"]} if "image" in report else None))
        if report.get("unparsed"):
            print(f"{len(report['unparsed'])} answer(s) gave no option letter (counted wrong); see 'unparsed' "
                  "in the report")
    print(f"Report: {os.path.abspath(args.output)} (answers: {report['answers']['file']})")
    return 0

"""GPT-assisted instruction data (the paper's section 3): captions + boxes -> a teacher LM -> LLaVA JSON.

`generate` runs it (resumable, journaled); `context` reads the symbolic images (`hf_llava.data.symbolic`
renders them), `prompt_sets` loads the replaceable prompt files, `parsers` turns replies into turns. Names
load on first use.
"""

from .._lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "DatagenSummary": ".runner",
    "PromptSet": ".prompt_sets",
    "ReplyRejected": ".parsers",
    "SymbolicImage": "..data.symbolic",
    "TYPES": ".parsers",
    "TypeCounts": ".runner",
    "dry_run": ".runner",
    "generate": ".runner",
    "load_prompts": ".prompt_sets",
    "parse_reply": ".parsers",
    "read_coco": ".context",
    "read_images": ".runner",
    "read_symbolic_jsonl": ".context",
    "render_context": "..data.symbolic",
})

__all__ = [
    "DatagenSummary",
    "PromptSet",
    "ReplyRejected",
    "SymbolicImage",
    "TYPES",
    "TypeCounts",
    "dry_run",
    "generate",
    "load_prompts",
    "parse_reply",
    "read_coco",
    "read_images",
    "read_symbolic_jsonl",
    "render_context",
]

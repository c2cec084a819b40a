"""The exported folder runs unchanged in transformers.js (Node) with the same greedy tokens as PyTorch; an AnyRes
(LLaVA-NeXT) folder, which transformers.js cannot pack, is refused by it.

Needs `node` (>= 18) and `@huggingface/transformers` installed with npm in a folder named by
`HF_LLAVA_TRANSFORMERS_JS` (default: `<repo>/.transformers-js`), e.g.:

    mkdir -p .transformers-js && cd .transformers-js && npm init -y >/dev/null &&
    ONNXRUNTIME_NODE_INSTALL=skip npm install --no-audit --no-fund @huggingface/transformers

(`ONNXRUNTIME_NODE_INSTALL=skip`: on linux/x64 onnxruntime-node's postinstall otherwise downloads the
CUDA provider from api.nuget.org; the CPU runtime ships in the npm package.) Skipped when either is missing.

transformers.js preprocesses images differently from transformers (no `LlavaImageProcessor`, other
resampling) and counts `<image>` tokens without the `default`-strategy CLS drop, so the test feeds it
the `input_ids` / `attention_mask` / `pixel_values` our processor made; it checks the tokenizer separately.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from hf_llava.onnx import export_onnx

REPO = Path(__file__).resolve().parents[2]
TJS_DIR = Path(os.environ.get("HF_LLAVA_TRANSFORMERS_JS", REPO / ".transformers-js"))
INSTALL_HINT = (
    f"mkdir -p {TJS_DIR} && cd {TJS_DIR} && npm init -y && "
    "ONNXRUNTIME_NODE_INSTALL=skip npm install @huggingface/transformers"
)

# Loads OUT_DIR with AutoTokenizer + AutoModelForImageTextToText (-> LlavaForConditionalGeneration via
# `model_type: llava`), local files only; greedy-generates from the given ids / pixels; prints JSON.
NODE_SCRIPT = r"""
const { createRequire } = require('node:module');
const fs = require('node:fs');
const path = require('node:path');
const [tjsDir, modelDir, inputsPath] = process.argv.slice(2);
const T = createRequire(path.join(tjsDir, 'package.json'))('@huggingface/transformers');
const { env, AutoTokenizer, AutoModelForImageTextToText, Tensor } = T;

const i64 = (rows) => new Tensor('int64', BigInt64Array.from(rows.flat().map(BigInt)), [rows.length, rows[0].length]);
const f32 = (p) => new Tensor('float32', Float32Array.from(p.data), p.dims);

(async () => {
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = path.dirname(modelDir) + path.sep;
  const name = path.basename(modelDir);
  const cases = JSON.parse(fs.readFileSync(inputsPath, 'utf8'));
  const tokenizer = await AutoTokenizer.from_pretrained(name);
  const model = await AutoModelForImageTextToText.from_pretrained(name, { dtype: 'fp32', device: 'cpu' });
  const result = { model_class: model.constructor.name, sessions: Object.keys(model.sessions).sort(), cases: [] };
  for (const c of cases) {
    const encoded = c.texts.map((t) => Array.from(tokenizer(t).input_ids.data, Number));
    const inputs = { input_ids: i64(c.input_ids), attention_mask: i64(c.attention_mask) };
    if (c.pixel_values) inputs.pixel_values = f32(c.pixel_values);
    const out = await model.generate({
      ...inputs, do_sample: false, max_new_tokens: c.new_tokens, min_new_tokens: c.new_tokens,
    });
    result.cases.push({ encoded, sequences: out.tolist().map((row) => row.map(Number)) });
  }
  console.log(JSON.stringify(result));
})().catch((e) => { console.error(e); process.exit(1); });
"""


# Loads OUT_DIR's model only; prints the class, or exits 1 with the error.
LOAD_SCRIPT = r"""
const { createRequire } = require('node:module');
const path = require('node:path');
const [tjsDir, modelDir] = process.argv.slice(2);
const T = createRequire(path.join(tjsDir, 'package.json'))('@huggingface/transformers');
(async () => {
  T.env.allowRemoteModels = false;
  T.env.allowLocalModels = true;
  T.env.localModelPath = path.dirname(modelDir) + path.sep;
  const model = await T.AutoModelForImageTextToText.from_pretrained(path.basename(modelDir), { dtype: 'fp32' });
  console.log(model.constructor.name);
})().catch((e) => { console.error(String(e)); process.exit(1); });
"""


def _node_with_transformers_js() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (transformers.js parity needs Node.js >= 18)")
    probe = subprocess.run(
        [node, "-e", "require(require('node:module').createRequire(process.argv[1])"
                     ".resolve('@huggingface/transformers'))", str(TJS_DIR / "package.json")],
        capture_output=True, text=True, timeout=60,
    )
    if probe.returncode != 0:
        error = next((line for line in probe.stderr.splitlines() if "Error" in line), "")
        pytest.skip(f"@huggingface/transformers is not installed in {TJS_DIR} (set HF_LLAVA_TRANSFORMERS_JS "
                    f"or run: {INSTALL_HINT}); node: {error}")
    return node


def _cases(model, processor, config, prompts, new_tokens=8):
    """Our processor's inputs for each `(texts, images)` and PyTorch's greedy sequences for them."""
    expand = "<image>" * config.num_image_tokens
    cases, expected = [], []
    for texts, imgs in prompts:
        batch = processor(images=imgs, text=texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            expected.append(model.generate(
                **batch, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens
            ).tolist())
        case = {
            "texts": [t.replace("<image>", expand) for t in texts],
            "input_ids": batch["input_ids"].tolist(),
            "attention_mask": batch["attention_mask"].tolist(),
            "new_tokens": new_tokens,
        }
        if "pixel_values" in batch:
            pixels = batch["pixel_values"]
            case["pixel_values"] = {"data": pixels.flatten().tolist(), "dims": list(pixels.shape)}
        cases.append(case)
    return cases, expected


def _run_transformers_js(out: Path, cases: list, tmp_path: Path) -> dict:
    node = _node_with_transformers_js()
    (tmp_path / "inputs.json").write_text(json.dumps(cases))
    (tmp_path / "run.cjs").write_text(NODE_SCRIPT)
    proc = subprocess.run(
        [node, str(tmp_path / "run.cjs"), str(TJS_DIR), str(out), str(tmp_path / "inputs.json")],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:  # a crash is an error, never an expected failure
        raise RuntimeError(f"node failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model_class"] == "LlavaForConditionalGeneration"
    assert result["sessions"] == ["decoder_model_merged", "embed_tokens", "vision_encoder"]
    for case, got in zip(cases, result["cases"]):
        # transformers.js's tokenizer (our tokenizer.json, byte-level BPE) gives our ids, pads aside
        ids = [[i for i, m in zip(row, mask) if m] for row, mask in zip(case["input_ids"], case["attention_mask"])]
        assert got["encoded"] == ids
    return result


def test_export_runs_in_transformers_js_with_pytorch_greedy_tokens(
    saved_llava, tmp_path, tiny_model, tiny_processor, tiny_config, images
):
    _node_with_transformers_js()
    out = export_onnx(saved_llava, tmp_path / "onnx-out", validate=False, show_progress=False, optimize="none")
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
    cases, expected = _cases(tiny_model, tiny_processor, tiny_config, [
        (["USER: <image>\nWhat is shown in the image? ASSISTANT:"], images[:1]),
        (["USER: <image>\nColor? ASSISTANT:"], images[1:]),
        (["USER: <image> and <image>\nCompare them. ASSISTANT:"], images),  # two images, one prompt
        (["USER: Where is the dog? ASSISTANT:", "USER: Hi ASSISTANT:"], None),  # left-padded, text only
    ])
    assert 0 in cases[3]["attention_mask"][1], "the text-only batch should be left-padded"
    result = _run_transformers_js(out, cases, tmp_path)
    for want, got in zip(expected, result["cases"]):
        assert got["sequences"] == want, f"transformers.js {got['sequences']} != PyTorch {want}"


@pytest.mark.xfail(
    reason="transformers.js (4.3.1, src/models/modeling_utils.js generic_text_to_text_forward, the "
    "`past_key_values && input_ids.dims[1] === 1` branch) replaces the past attention mask with ones on "
    "every decoding step once pixel_values are given, so left padding is attended after the first token",
    raises=AssertionError,
    strict=True,  # once a pinned transformers.js fixes it, this test fails and the mark must go
)
def test_left_padded_image_batch_in_transformers_js(
    saved_llava, tmp_path, tiny_model, tiny_processor, tiny_config, images
):
    _node_with_transformers_js()
    out = export_onnx(saved_llava, tmp_path / "onnx-out", validate=False, show_progress=False, optimize="none")
    cases, expected = _cases(tiny_model, tiny_processor, tiny_config, [
        (["USER: <image>\nWhat is shown in the image? ASSISTANT:", "USER: <image>\nColor? ASSISTANT:"], images),
    ])
    assert 0 in cases[0]["attention_mask"][1], "the batch should be left-padded"
    result = _run_transformers_js(out, cases, tmp_path)
    assert result["cases"][0]["sequences"] == expected[0]


def test_anyres_export_is_refused_by_transformers_js_not_run_unpacked(saved_next, tmp_path):
    # transformers.js has no AnyRes packing: a NeXT folder names itself llava_next, which it does not load
    # (were it `llava`, it would feed the tiles' features unpacked). Once it loads, parity must be tested here.
    node = _node_with_transformers_js()
    out = export_onnx(saved_next, tmp_path / "onnx-out", validate=False, show_progress=False)
    (tmp_path / "load.cjs").write_text(LOAD_SCRIPT)
    proc = subprocess.run([node, str(tmp_path / "load.cjs"), str(TJS_DIR), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "Unsupported model type: llava_next" in proc.stderr, proc.stderr[-2000:]


def test_gqa_export_is_refused_by_transformers_js(saved_llava, tmp_path):
    # The GQA decoder takes positions from the mask and wants right-aligned rows: transformers.js feeds left-padded
    # batches, so the folder keeps hf-llava's own model type, which transformers.js does not load.
    from transformers import LlamaConfig

    from hf_llava.onnx.builder import unavailable_reason

    reason = unavailable_reason(LlamaConfig())
    if reason:
        pytest.skip(f"GQA decoder: {reason}")
    node = _node_with_transformers_js()
    out = export_onnx(saved_llava, tmp_path / "onnx-out", validate=False, show_progress=False, optimize="gqa")
    (tmp_path / "load.cjs").write_text(LOAD_SCRIPT)
    proc = subprocess.run([node, str(tmp_path / "load.cjs"), str(TJS_DIR), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "Unsupported model type: hf_llava" in proc.stderr, proc.stderr[-2000:]

"""The README's and docs/' Python snippets run as written, or say why they cannot run offline."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# A snippet that needs a download, a server or files of your own starts with this line; the tests skip it.
NOT_OFFLINE = "# Not run offline: "


def _python_snippets(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _model_snippet() -> str:
    """The offline snippet under "## The model": builds, saves and loads `my-llava`."""
    text = README.read_text(encoding="utf-8")
    return _python_snippets(text[text.index("## The model"):])[0]


SNIPPETS = [(page, i, code) for page in PAGES
            for i, code in enumerate(_python_snippets(page.read_text(encoding="utf-8")))]


@pytest.mark.parametrize("page, code", [(p, c) for p, _, c in SNIPPETS],
                         ids=[f"{p.relative_to(ROOT)}:{i}" for p, i, _ in SNIPPETS])
def test_snippet_runs_or_says_why_not(page, code, tmp_path, monkeypatch):
    if code.startswith(NOT_OFFLINE):
        pytest.skip(code.splitlines()[0][len(NOT_OFFLINE):])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    model_snippet = _model_snippet()
    if code != model_snippet:
        # The other snippets use the `my-llava` folder the model snippet writes, as the pages say.
        exec(compile(model_snippet, str(README), "exec"), namespace)
    exec(compile(code, str(page), "exec"), namespace)
    if code == model_snippet:
        assert (tmp_path / "my-llava" / "config.json").is_file()
        assert type(namespace["model"]).__name__ == "LlavaForConditionalGeneration"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\((?!https?://|#)([^)#]+)", page.read_text(encoding="utf-8")):
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"

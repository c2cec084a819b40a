"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) for the installed transformers.

The wheel ships no tests. The source distribution on PyPI ships transformers' top-level `tests/*.py` (4.57.6 and
5.25.0 alike) but none of its subfolders, which three of those files import from:
- `tests/generation/test_utils.py` (`GenerationTesterMixin`): stood in by an empty class, so the generation
  suite does not run here (our own tests cover generation); the inheritance check that names it is skipped.
- `tests/exporters/test_export.py` (`ExportTesterMixin`, 5.x's base of `ModelTesterMixin`): an empty class
  (the `torch.export` tests do not run).
- `tests/utils/test_configuration_utils.py` (`config_common_kwargs`): an empty dict; `ConfigTester` reads it
  only for configs without sub-configs, which LlavaConfig is not.
(`tests/test_pipeline_mixin.py` imports `tests/pipelines/*`, also absent: the pipeline suite cannot run.)

`load()` downloads the sdist of the exact installed version once (pip; or takes one fetched by hand, see
`FETCH_COMMAND`), keeps its top-level test files in
`~/.cache/hf-llava/transformers-tests/<version>/transformers_tests/` (written whole or not at all) and imports
them as the package `transformers_tests`, which clashes with nothing of ours (our `tests` folder is imported by
pytest as `tests.*`). Their imports of one another are relative, so nothing is rewritten.
"""

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import transformers

from hf_llava._io import atomic_folder

VERSION = transformers.__version__
PACKAGE = "transformers_tests"
CACHE = Path(os.environ.get("HF_LLAVA_CACHE", Path.home() / ".cache" / "hf-llava")) / "transformers-tests" / VERSION
# An sdist fetched by hand into CACHE's parent folder is used instead of downloading one.
FETCH_COMMAND = (f"{sys.executable} -m pip download --no-deps --no-binary :all: -d {CACHE.parent} "
                 f"transformers=={VERSION}")
# The pytest marks the common test files and `transformers.testing_utils` put on tests (the suite runs with
# --strict-markers; tests/modeling/conftest.py registers them).
MARKERS = ("accelerate_tests", "bitsandbytes", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test",
           "is_agent_test", "is_expert_parallel_test", "is_fsdp_test", "is_pipeline_test", "is_staging_test",
           "is_tensor_parallel_test", "is_training_test", "order", "torch_compile_test", "torch_export_test")
# What the sdist lacks (see the module docstring): module -> {name: stand-in}.
_STAND_INS = {
    "generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {
        "__doc__": "Stand-in: transformers' sdist does not ship tests/generation/test_utils.py."})},
    "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {
        "__doc__": "Stand-in: transformers' sdist does not ship tests/exporters/test_export.py."})},
    "utils.test_configuration_utils": {"config_common_kwargs": {}},
}


class Unavailable(RuntimeError):
    """transformers' test sources could not be obtained (the message says why and how to fetch them)."""


def _fetch() -> Path:
    """The folder holding the package `transformers_tests` for the installed version (downloaded once)."""
    if (CACHE / PACKAGE / "test_modeling_common.py").is_file():
        return CACHE
    with atomic_folder(CACHE) as tmp:
        sdists = [CACHE.parent / f"transformers-{VERSION}.tar.gz"]
        if not sdists[0].is_file():
            download = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                 "--disable-pip-version-check", "-d", str(tmp / "sdist"), f"transformers=={VERSION}"],
                capture_output=True, text=True, timeout=600,
            )
            sdists = sorted((tmp / "sdist").glob("transformers-*.tar.gz"))
            if download.returncode or not sdists:
                last = (download.stderr.strip().splitlines() or ["no sdist written"])[-1]
                raise Unavailable(f"transformers {VERSION}'s test sources could not be downloaded ({last}); fetch "
                                  f"them with `{FETCH_COMMAND}` once a package index is reachable.")
        package = tmp / PACKAGE
        package.mkdir()
        with tarfile.open(sdists[0]) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts  # transformers-X/tests/NAME.py: the top level only
                if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                    (package / parts[2]).write_bytes(archive.extractfile(member).read())
        (package / "__init__.py").touch()
        shutil.rmtree(tmp / "sdist", ignore_errors=True)
    return CACHE


def _install_stand_ins() -> None:
    for dotted, names in _STAND_INS.items():
        parent = PACKAGE
        for part in dotted.split(".")[:-1]:  # the missing subpackages, as empty packages
            parent = f"{parent}.{part}"
            sys.modules.setdefault(parent, types.ModuleType(parent)).__path__ = []
        module = types.ModuleType(f"{PACKAGE}.{dotted}")
        module.__dict__.update(names)
        sys.modules.setdefault(module.__name__, module)


def load() -> types.SimpleNamespace:
    """transformers' `test_modeling_common` and `test_configuration_common` modules for the installed version.

    Raises `Unavailable` when they cannot be obtained (no package index, or a test dependency missing).
    """
    try:
        import parameterized  # noqa: F401  (transformers' test modules import it)
    except ImportError:
        raise Unavailable(
            "transformers' common tests need the `parameterized` package: pip install parameterized"
        ) from None
    root = str(_fetch())
    if root not in sys.path:
        sys.path.append(root)
    _install_stand_ins()
    return types.SimpleNamespace(
        modeling=importlib.import_module(f"{PACKAGE}.test_modeling_common"),
        configuration=importlib.import_module(f"{PACKAGE}.test_configuration_common"),
    )

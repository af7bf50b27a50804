import subprocess
import sys

import fliprm


def test_all_is_sorted_and_complete():
    public = {n for n in dir(fliprm) if not n.startswith("_") and n not in {"annotations"}}
    modules = {n for n in public if type(getattr(fliprm, n)).__name__ == "module"}
    # isort order (ruff RUF022): CONSTANTS, then Classes, then functions, each alphabetical
    def isort_key(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert fliprm.__all__ == sorted(fliprm.__all__, key=isort_key)
    assert len(fliprm.__all__) == len(set(fliprm.__all__))
    assert public - modules <= set(fliprm.__all__)
    assert {"RewardConfig", "RuntimeOptions"} <= set(fliprm.__all__)


def test_core_import_is_light():
    code = (
        "import sys, fliprm, fliprm.reward, fliprm.backends.openai, fliprm.batch;"
        "heavy = [m for m in ('torch', 'ray', 'trl', 'fastapi', 'uvicorn', 'xllamacpp', "
        "'matplotlib', 'datasets', 'transformers', 'pyarrow') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_test_folder_shadows_a_package():
    # Regression: a tests/vllm folder (on sys.path through the test layout) made
    # importlib.util.find_spec("vllm") succeed, so TRL believed vLLM was installed, read its
    # version as "N/A" and failed to import GRPOTrainer.
    from pathlib import Path

    tests = Path(__file__).parent
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    shadowed = folders & {"vllm", "trl", "ray", "torch", "transformers", "datasets", "verl",
                          "openrlhf", "open_instruct", "fliprm", "sglang", "accelerate"}
    assert not shadowed

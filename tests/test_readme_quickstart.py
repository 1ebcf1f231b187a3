"""The README's Python quickstart runs as written, so it cannot rot."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_code() -> str:
    """The python block between ``<!-- quickstart -->`` and ``<!-- /quickstart -->`` in README.md."""
    pattern = r"<!-- quickstart -->\s*```python\n(.*?)```\s*<!-- /quickstart -->"
    found = re.findall(pattern, README.read_text(), flags=re.DOTALL)
    assert len(found) == 1, "README.md needs exactly one <!-- quickstart --> python block"
    return found[0]


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes data/, runs/ and my-policy/ where it runs
    namespace: dict = {"__name__": "__quickstart__"}
    exec(compile(quickstart_code(), str(README), "exec"), namespace)
    from fastpolicy.policies.bc import BCPolicy

    assert isinstance(namespace["policy"], BCPolicy)
    assert (tmp_path / "my-policy" / "model.safetensors").exists()
    assert len(namespace["session"].stats.nfe) == 20  # the loop ran all its steps
    assert np.all(np.isfinite(namespace["obs"]))

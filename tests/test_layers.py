"""The import contracts in pyproject.toml hold (`make lint` runs them too; here `make test` fails as well), and the
layers contract catches a lower layer importing a higher one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd first on the path: the kvsched found there (the repository, or a copy) is the one checked.
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_lower_layer_importing_a_higher_one_breaks_the_layers(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "kvsched", tmp_path / "kvsched", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    names = tmp_path / "kvsched" / "api" / "names.py"
    names.write_text(names.read_text() + "\nfrom kvsched.runtime import loop  # noqa: E402  (the violation)\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "kvsched.api.names -> kvsched.runtime.loop" in result.stdout, result.stdout

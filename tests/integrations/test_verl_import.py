"""Importing fastrl.integrations.verl where verl is missing or broken (no verl needed)."""
import os
import subprocess
import sys

REGISTER = "import warnings; warnings.simplefilter('error'); import fastrl.integrations.verl as v; print(v.registered)"


def run(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", REGISTER], capture_output=True, text=True, env=env, timeout=300)


def test_a_verl_that_does_not_import_is_a_warning(tmp_path):
    """verl installed, but its core_algos failing on a missing dependency: nothing was
    registered and nothing said so (a run then met an unknown estimator name)."""
    package = tmp_path / "verl" / "trainer" / "ppo"
    package.mkdir(parents=True)
    for folder in (tmp_path / "verl", tmp_path / "verl" / "trainer", package):
        (folder / "__init__.py").write_text("")
    (package / "core_algos.py").write_text("import a_dependency_verl_lacks\n")
    out = run(tmp_path)
    assert out.returncode != 0 and "verl is installed but does not import (No module named " \
        "'a_dependency_verl_lacks'); fastrl's estimators are not registered" in out.stderr


def test_without_verl_nothing_is_said(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['verl'] = None  # as if not installed\n")
    out = run(tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "False" and not out.stderr, out.stderr

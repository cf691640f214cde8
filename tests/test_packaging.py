"""Packaging: what `pip install .` gives and what it needs.

- the kernels install as ``megatron_omni.kernels`` and never as a top-level ``kernels`` module (the public
  index has an unrelated ``kernels`` package that transformers integrates with);
- the wheel holds every source file of ``megatron_omni/`` and ``kernels/`` (a sub-package without
  ``__init__.py`` would silently be left out) and nothing at the top level besides ``megatron_omni``;
- every range in pyproject.toml is satisfied by the pinned lock requirements.txt, and no file asks for the
  public package named ``apex`` (NVIDIA apex is built from source).

Offline and fast (the wheel builds from a copy of the sources, without build isolation or an index, in a
few seconds). Each check is a function returning the problems it finds, and each has a test showing that
it does find a planted one.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"
REQUIREMENTS = REPO / "requirements.txt"
REQUIREMENTS_GPU = REPO / "requirements-gpu.txt"
CONSOLE_SCRIPTS = {
    "megatron-omni-train": "megatron_omni.cli.train:main",
    "megatron-omni-pretrain-decoder": "megatron_omni.cli.pretrain_decoder:main",
}
# Extras that requirements.txt pins (the CPU lock); `gpu` is checked against requirements-gpu.txt instead.
PINNED_EXTRAS = ("test", "dev")
FORBIDDEN = {"apex"}  # the unrelated public package; NVIDIA apex is built from source

# --------------------------------------------------------------------------------------------------
# (a) import names, from outside the repository


PROBE = """
import json
out = {}
try:
    import kernels
    out["kernels"] = getattr(kernels, "__file__", None) or repr(kernels)
except ModuleNotFoundError as e:
    out["kernels"] = "ModuleNotFoundError" if e.name == "kernels" else f"ModuleNotFoundError({e.name})"
except Exception as e:
    out["kernels"] = f"{type(e).__name__}: {e}"
if not ONLY_TOP_LEVEL:
    import megatron_omni.kernels
    out["megatron_omni.kernels"] = megatron_omni.kernels.__file__
print("PROBE" + json.dumps(out))
"""


def probe_imports(cwd: Path, extra_env: dict | None = None, only_top_level: bool = False) -> dict:
    """Import names in a fresh interpreter whose cwd is `cwd` and whose environment has no PYTHON* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(extra_env or {})
    proc = subprocess.run([sys.executable, "-c", PROBE.replace("ONLY_TOP_LEVEL", str(only_top_level))], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"probe failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE"))
    return json.loads(line[len("PROBE"):])


def import_problems(found: dict) -> list[str]:
    problems = []
    if found.get("kernels") != "ModuleNotFoundError":
        problems.append(f"`import kernels` must fail with ModuleNotFoundError, got {found.get('kernels')!r}")
    if "megatron_omni.kernels" in found:
        path = Path(found["megatron_omni.kernels"]).resolve()
        if path != (REPO / "kernels" / "__init__.py").resolve():
            problems.append(f"megatron_omni.kernels resolves to {path}, not the repository's kernels/")
    return problems


def test_only_megatron_omni_kernels_is_importable(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert not outside.resolve().is_relative_to(REPO.resolve())
    found = probe_imports(outside)
    assert "megatron_omni.kernels" in found
    assert import_problems(found) == []


def test_import_probe_notices_a_top_level_kernels(tmp_path):
    # With the repository root on the path, its kernels/ folder is importable as `kernels`: the check must see it.
    found = probe_imports(tmp_path, extra_env={"PYTHONPATH": str(REPO)}, only_top_level=True)
    assert import_problems(found), found


# --------------------------------------------------------------------------------------------------
# (b) the wheel's file list

BUILD_INPUTS = ("setup.py", "pyproject.toml", "README.md", "megatron_omni", "kernels")


def source_files() -> set[str]:
    """The paths every .py file of the sources must have inside the wheel."""
    expected = set()
    for folder, prefix in (("megatron_omni", "megatron_omni"), ("kernels", "megatron_omni/kernels")):
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                expected.add(f"{prefix}/{path.relative_to(REPO / folder).as_posix()}")
    return expected


def wheel_problems(names: list[str], expected: set[str]) -> list[str]:
    problems = []
    top = {name.split("/")[0] for name in names}
    if "megatron_omni/kernels/__init__.py" not in names:
        problems.append("the wheel has no megatron_omni/kernels/__init__.py")
    stray = sorted(t for t in top if t != "megatron_omni" and not t.endswith(".dist-info"))
    if stray:
        problems.append(f"the wheel installs top-level names besides megatron_omni: {stray}")
    missing = sorted(expected - set(names))
    if missing:
        problems.append(f"source files missing from the wheel (a sub-package without __init__.py?): {missing}")
    return problems


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """Build the wheel from a copy of the sources (keeps build/ and egg-info out of the repository)."""
    root = tmp_path_factory.mktemp("wheel")
    src, out = root / "src", root / "out"
    src.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
           "-w", str(out), str(src)]
    env = dict(os.environ, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (built,) = out.glob("megatron_omni-*.whl")
    with zipfile.ZipFile(built) as zf:
        yield zf


def test_wheel_installs_kernels_under_megatron_omni_only(wheel):
    names = wheel.namelist()
    assert wheel_problems(names, source_files()) == []
    assert not any(name.startswith("kernels/") for name in names)


def test_wheel_metadata_declares_pyproject_dependencies_and_scripts(wheel):
    names = wheel.namelist()
    metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = {str(Requirement(line.split(":", 1)[1].strip())) for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line}
    declared = {str(Requirement(dep)) for dep in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]}
    assert requires == declared
    entry_points = wheel.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    for script, target in CONSOLE_SCRIPTS.items():
        assert f"{script} = {target}" in entry_points


def test_wheel_check_notices_a_top_level_kernels_and_a_missing_file():
    names = ["megatron_omni/__init__.py", "kernels/__init__.py", "megatron_omni-0.1.0.dist-info/METADATA"]
    problems = wheel_problems(names, {"megatron_omni/__init__.py", "megatron_omni/kernels/kl/op.py"})
    assert len(problems) == 3, problems


# --------------------------------------------------------------------------------------------------
# (c) ranges in pyproject.toml against the pinned lock


def parse_pins(text: str) -> dict[str, Version]:
    """requirements.txt as {canonical name: pinned version}; every requirement line must be an exact pin."""
    pins = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"requirements.txt must list plain pins, not options: {raw!r}"
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {raw!r}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{req.name} pinned twice"
        pins[name] = Version(specs[0].version)
    return pins


def declared_requirements(pyproject: dict) -> list[tuple[str, Requirement]]:
    project = pyproject["project"]
    reqs = [("dependencies", Requirement(dep)) for dep in project.get("dependencies", [])]
    for extra in PINNED_EXTRAS:
        reqs += [(f"[{extra}]", Requirement(dep)) for dep in project.get("optional-dependencies", {}).get(extra, [])]
    return reqs


def pin_problems(pyproject: dict, requirements_text: str) -> list[str]:
    pins = parse_pins(requirements_text)
    problems = [f"requirements.txt names the unrelated public package {name!r}" for name in FORBIDDEN & pins.keys()]
    for where, req in declared_requirements(pyproject):
        name = canonicalize_name(req.name)
        if name in FORBIDDEN:
            problems.append(f"pyproject {where} asks for the unrelated public package {req.name!r}")
            continue
        operators = {spec.operator for spec in req.specifier}
        if not operators & {">=", "~=", ">"} or not operators & {"<", "~="}:
            problems.append(f"pyproject {where}: {req} is not a range with a lower and an upper bound")
        if name not in pins:
            problems.append(f"pyproject {where}: {req.name} has no pin in requirements.txt")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"pyproject {where}: pin {req.name}=={pins[name]} does not satisfy {req.specifier}")
    return problems


def test_every_range_has_a_satisfying_pin():
    pyproject = tomllib.loads(PYPROJECT.read_text())
    assert pyproject["project"]["dependencies"], "pyproject declares no dependencies"
    assert pin_problems(pyproject, REQUIREMENTS.read_text()) == []


def test_pin_check_notices_bad_pins():
    pyproject = {"project": {"dependencies": ["torch>=2.11,<2.14", "numpy>=2.4,<3", "tqdm>=4.70", "apex>=0.1,<1"],
                             "optional-dependencies": {"test": ["pytest>=9.2,<10"]}}}
    problems = pin_problems(pyproject, "torch==2.14.0\ntqdm==4.70.1\napex==0.9.10\n")
    assert any("torch==2.14.0" in p for p in problems), problems
    assert any("numpy has no pin" in p for p in problems), problems
    assert any("tqdm>=4.70 is not a range" in p for p in problems), problems
    assert any("'apex'" in p and "requirements.txt" in p for p in problems), problems
    assert any("pytest has no pin" in p for p in problems), problems


def test_gpu_extra_matches_requirements_gpu():
    gpu = [Requirement(dep) for dep in tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["gpu"]]
    lines = [ln.strip() for ln in REQUIREMENTS_GPU.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    locked = [Requirement(ln) for ln in lines]
    assert {str(r) for r in gpu} == {str(r) for r in locked}
    assert not FORBIDDEN & {canonicalize_name(r.name) for r in locked}

"""The README as a newcomer meets it: short, readable, and its plugin example installs as written."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_is_a_guide_not_a_notebook():
    lines = README.splitlines()
    assert len(lines) <= 170, len(lines)
    in_code, long = False, []
    for i, line in enumerate(lines, 1):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and len(line) > 200:
            long.append(i)
    assert not long, f"README lines over 200 characters: {long}"
    links = [t for t in re.findall(r"\]\(([^)#]+)\)", README) if not t.startswith("http")]
    assert links and all((ROOT / t).exists() for t in links), [t for t in links if not (ROOT / t).exists()]


def test_readme_counts_and_flags_match_the_code(cli):
    """The spec counts the README states equal the files under sweeps/, and every --flag it gives a
    ``python -m harness.X`` command is in that command's --help."""
    counts = re.findall(r"`(\w+)\*` \((\d+) specs", README)
    assert len(counts) >= 2
    for prefix, stated in counts:
        assert len(list((ROOT / "sweeps").glob(f"{prefix}*.json"))) == int(stated), prefix
    flags: dict[str, set[str]] = {}
    for module, rest in re.findall(r"python -m harness\.(\w+)([^`\n]*)", README):
        flags.setdefault(module, set()).update(re.findall(r"(--\w+)", rest))
    assert flags.get("sweep") and flags.get("train")
    for module, names in flags.items():
        help_text = cli(f"harness.{module}", "--help").stdout
        missing = sorted(f for f in names if f not in help_text)
        assert not missing, f"python -m harness.{module} has no {missing}"


def test_no_citation_of_files_outside_the_repository():
    sources = [ROOT / "README.md", *(ROOT / "harness").rglob("*.py"), *(ROOT / "docs").glob("*.md")]
    offenders = [str(p.relative_to(ROOT)) for p in sources if re.search(r"DESIGN\.md|\.\./shared", p.read_text())]
    assert not offenders, offenders


@pytest.mark.slow  # pip install and a short training run: about a minute on 2 cores
def test_readme_plugin_example_installs_as_written(cli, tmp_path):
    (module,) = [b for b in code_blocks("python") if b.startswith("# my_pkg/label_smooth.py")]
    (pyproject,) = code_blocks("toml")
    src = tmp_path / "src"
    (src / "my_pkg").mkdir(parents=True)
    (src / "my_pkg" / "__init__.py").write_text("")
    (src / "my_pkg" / "label_smooth.py").write_text(module)
    (src / "pyproject.toml").write_text(pyproject)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, capture_output=True, text=True)
    proc = cli("harness.list", "algorithms", env={"PYTHONPATH": str(site)})
    assert "  LabelSmoothERM  (plugin)" in proc.stdout.splitlines()
    out = tmp_path / "run"
    cli("harness.train", "--dataset", "SyntheticLinear", "--algorithm", "LabelSmoothERM", "--steps", "5",
        "--checkpoint_freq", "5", "--output_dir", str(out), env={"PYTHONPATH": str(site)})
    assert (out / "done").exists()


@pytest.mark.slow  # trains SparseShared and ERM for 2000 steps each (sweeps/default.json)
def test_readme_quick_start_runs_as_written(tmp_path):
    """The README's first command, less its ``pip install -e .`` (done already), from a fresh folder."""
    first = code_blocks("bash")[0].strip()
    steps = [s.strip() for s in first.split("&&")]
    assert steps[0] == "pip install -e ." and steps[1].startswith("python -m harness.sweep launch")
    proc = subprocess.run(" && ".join(s.replace("python ", f"{sys.executable} ", 1) for s in steps[1:]),
                          shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished: 2/2 done" in proc.stdout
    assert "SparseShared" in proc.stdout and "DCI D" in proc.stdout
    assert (tmp_path / "results" / "plots").is_dir()  # collect_results reads results/ by default: INPUT_DIR/plots


def test_cpu_torch_command_comes_before_the_quick_start():
    """Issue 33: a CPU-only machine gets the command for PyTorch's CPU wheels before the quick start,
    as an option: the first two bash blocks stay the quick start and the test command."""
    cpu = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"
    first = code_blocks("bash")[0].strip()
    assert cpu in README and README.index(cpu) < README.index(first)
    assert first.startswith("pip install -e . && python -m harness.sweep launch")
    assert code_blocks("bash")[1].strip() == 'pip install -e ".[test]" && pytest'

"""The CI workflow users copy: actionlint passes it, and every ffnbench command and make target it
runs exists with the flags it passes."""

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ffnbench.yml"


def run_steps() -> list[str]:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    return [step["run"] for job in jobs.values() for step in job["steps"] if "run" in step]


def commands(program: str) -> list[list[str]]:
    """Each invocation of `program` in the run steps, as its arguments (one command a line)."""
    out = []
    for script in run_steps():
        for line in script.splitlines():
            words = shlex.split(line.replace("$(", " ").replace(")", " "), comments=True)
            out += [words[i + 1:] for i, word in enumerate(words) if Path(word).name == program]
    return out


def test_actionlint_passes_the_workflow():
    actionlint = Path(sys.executable).parent / "actionlint"
    result = subprocess.run([str(actionlint), "-no-color", str(WORKFLOW)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The lint can fail: a job that needs one that does not exist."""
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text().replace("needs: run", "needs: runs"))
    result = subprocess.run([str(Path(sys.executable).parent / "actionlint"), "-no-color", str(broken)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1 and '"runs"' in result.stdout, result.stdout


def test_every_ffnbench_command_it_runs_takes_its_flags(ffnbench_exe):
    runs = commands("ffnbench")
    assert sorted(args[0] for args in runs) == ["gate", "merge", "run"]
    for subcommand, *args in runs:
        help_text = subprocess.run([ffnbench_exe, subcommand, "--help"], capture_output=True, text=True,
                                   timeout=120, check=True).stdout
        flags = [arg for arg in args if arg.startswith("--")]
        assert flags and all(f"{flag} " in help_text or f"{flag}\n" in help_text for flag in flags), (subcommand, flags)


def test_every_make_target_it_runs_exists():
    targets = {args[0] for args in commands("make")}
    assert targets == {"venv"}
    result = subprocess.run(["make", "-n", *targets], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr

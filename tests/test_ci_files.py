"""The CI files users copy are valid, as check-jsonschema would say: action.yml against the
GitHub Action schema, .github/workflows/ci.yml and the README's GitHub Actions jobs against the
workflow schema, the README's Azure Pipelines job against the pipelines schema (subsets of the
published schemas, vendored in tests/schemas/). The action's check step runs here as GitHub
would run it, on a generated disk, and sets its outputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fixtures.vhdbuild import MIB, build_dynamic, build_fixed

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "tests" / "schemas"


def load_yaml(text: str) -> Any:
    doc = yaml.safe_load(text)
    if isinstance(doc, dict) and True in doc:  # YAML 1.1 reads the key `on` as a boolean
        doc["on"] = doc.pop(True)
    return doc


def validator(name: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def valid(name: str, doc: Any) -> None:
    errors = sorted(validator(name).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def readme_yaml() -> list[Any]:
    text = (REPO / "README.md").read_text()
    return [load_yaml(body) for body in re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M)]


def test_action_and_workflow_match_the_published_schemas() -> None:
    action = load_yaml((REPO / "action.yml").read_text())
    valid("github-action.json", action)
    assert action["runs"]["using"] == "composite"
    assert {"disk", "junit", "preflight"} <= set(action["inputs"])
    workflow = load_yaml((REPO / ".github" / "workflows" / "ci.yml").read_text())
    valid("github-workflow.json", workflow)
    steps = [s.get("uses") or s.get("run", "") for job in workflow["jobs"].values()
             for s in job["steps"]]
    assert "make test" in steps and "./" in steps  # the suite, and this repository's action


def test_the_schemas_refuse_what_ci_would_refuse() -> None:
    """The vendored schemas are not vacuous: the mistakes the README once had fail them."""
    bad_step = {"on": "push", "jobs": {"j": {"runs-on": "ubuntu-latest", "steps": [
        {"name": "both", "run": "x", "uses": "a/b@v1"}]}}}
    assert list(validator("github-workflow.json").iter_errors(bad_step))
    no_runner = {"on": "push", "jobs": {"j": {"steps": [{"run": "x"}]}}}
    assert list(validator("github-workflow.json").iter_errors(no_runner))
    only_steps = [{"script": "vhdkit check d.vhd"}]  # a fragment, as the README had
    assert list(validator("azure-pipelines.json").iter_errors(only_steps))
    composite_without_shell = {"name": "n", "description": "d", "runs": {
        "using": "composite", "steps": [{"run": "x"}]}}
    assert list(validator("github-action.json").iter_errors(composite_without_shell))


def test_readme_ci_examples_are_complete_jobs() -> None:
    docs = readme_yaml()
    github = [d for d in docs if isinstance(d, dict) and "jobs" in d and "on" in d]
    azure = [d for d in docs if isinstance(d, dict) and "jobs" in d and "on" not in d]
    assert len(github) == 2 and len(azure) == 1 and len(docs) == 3
    for d in github:
        valid("github-workflow.json", d)
        (job,) = d["jobs"].values()
        runs = [s.get("run", "") for s in job["steps"]]
        uses = [s.get("uses", "") for s in job["steps"]]
        # vhdkit comes from somewhere: the action, or an install step before it is used
        assert any(u.startswith("OWNER/vhdkit@") for u in uses) or any(
            r.startswith("pip install") for r in runs)
        assert "actions/checkout@v4" in uses
    (pipeline,) = azure
    valid("azure-pipelines.json", pipeline)
    (job,) = pipeline["jobs"]
    scripts = [s.get("script", "") for s in job["steps"]]
    install = next(i for i, s in enumerate(scripts) if s.startswith("pip install"))
    check = next(i for i, s in enumerate(scripts) if s.startswith("vhdkit check"))
    assert install < check and job["pool"]["vmImage"]
    publish = [s for s in job["steps"] if s.get("task") == "PublishTestResults@2"]
    assert publish and publish[0]["condition"] == "always()"


def action_check_step() -> dict[str, Any]:
    action = load_yaml((REPO / "action.yml").read_text())
    return next(s for s in action["runs"]["steps"] if s.get("id") == "check")


@pytest.mark.parametrize("case", ["ready", "not-ready"])
def test_action_check_step_runs_as_github_runs_it(case: str, tmp_path: Path) -> None:
    step = action_check_step()
    if case == "ready":
        disk = build_fixed(tmp_path / "disk.vhd", 32 * MIB)
    else:
        disk = build_dynamic(tmp_path / "disk.vhd", 32 * MIB, 2 * MIB, {0: (None, b"x")})
    out = tmp_path / "github_output"
    out.write_text("")
    bindir = tmp_path / "bin"  # `vhdkit` on PATH, as pip installs it
    bindir.mkdir()
    (bindir / "vhdkit").write_text(f"#!/bin/sh\nexec {sys.executable} -m vhdkit \"$@\"\n")
    (bindir / "vhdkit").chmod(0o755)
    env = dict(os.environ, DISK=str(disk), JUNIT=str(tmp_path / "r.xml"), PREFLIGHT="true",
               EXPECT="generalized", VHDKIT_JUNIT_WARNINGS="skip", GITHUB_OUTPUT=str(out),
               PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(REPO / "src"))
    assert step["shell"] == "bash"
    res = subprocess.run(["bash", "-e", "-c", step["run"]], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == (0 if case == "ready" else 1), res.stderr
    assert out.read_text() == f"ready={'true' if case == 'ready' else 'false'}\n"
    assert '<testsuite name="vhdkit.check"' in (tmp_path / "r.xml").read_text()

"""What a user meets first: NOTES.txt warns while `image.repository` is the default (no public image has that name),
`helm template` without `--kube-version` fails on the chart's kubeVersion as docs/deploy.md says, and the command
docs/deploy.md shows instead renders."""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.chart import CHART_DIR, Helm, documents

DEPLOY_DOC = CHART_DIR.parents[1] / "docs" / "deploy.md"
DEFAULT_IMAGE = "kvsched/kvsched"
WARNING = "WARNING: image.repository is the chart's default"


def render_notes(helm: Helm, tmp_path: Path, set_args: list[str]) -> str:
    """NOTES.txt as `helm install` would print it (`helm template` leaves NOTES out): a copy of the chart whose
    NOTES.txt is a named template that a probe manifest includes."""
    chart = tmp_path / "kvsched"
    shutil.copytree(CHART_DIR, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes_probe.tpl").write_text(f'{{{{- define "probe.notes" -}}}}\n{notes}{{{{- end -}}}}\n')
    (chart / "templates" / "notes-probe.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes-probe}\ndata:\n'
        '  notes: {{ include "probe.notes" . | quote }}\n')
    args = ["template", "kvsched", str(chart), "--kube-version", helm.k8s_version,
            "--show-only", "templates/notes-probe.yaml"]
    for s in set_args:
        args += ["--set", s]
    [probe] = documents(helm.run(*args).stdout)
    return str(probe["data"]["notes"])


@pytest.mark.parametrize("set_args, warned", [
    pytest.param([], True, id="default values: warned"),
    pytest.param(["image.tag=0.1.0"], True, id="only the tag set: still the default repository"),
    pytest.param(["image.repository=registry.example.com/kvsched", "image.tag=0.1.0"], False,
                 id="own registry: no warning"),
])
def test_notes_warn_while_the_image_is_the_default(helm: Helm, tmp_path: Path, set_args: list[str],
                                                   warned: bool) -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["image"]["repository"] == DEFAULT_IMAGE
    notes = render_notes(helm, tmp_path, set_args)
    assert "is installed in namespace" in notes  # the rest of the notes rendered
    assert (WARNING in notes) is warned, notes[:600]
    if warned:
        assert "--set image.repository=" in notes


def test_helm_template_without_kube_version_fails_on_kube_version_as_documented(helm: Helm) -> None:
    """Helm's `template` assumes Kubernetes v1.20.0 when not told; the chart's kubeVersion refuses it. Helm checks
    kubeVersion before any template runs, so the chart cannot reword the message (docs/deploy.md says what to do)."""
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    done = helm.run("template", "kvsched", str(CHART_DIR), check=False)
    assert done.returncode != 0
    assert f"chart requires kubeVersion: {chart['kubeVersion']}" in done.stderr, done.stderr
    assert "v1.20.0" in done.stderr
    doc = DEPLOY_DOC.read_text()
    assert "v1.20.0" in doc and chart["kubeVersion"] in doc


def documented_template_commands() -> list[str]:
    return [line.strip() for line in DEPLOY_DOC.read_text().splitlines()
            if line.strip().startswith("helm template ")]


def scheduler_image(docs: list[dict[str, Any]]) -> str:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return str(next(c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "kube-scheduler"))


def test_the_documented_helm_template_command_renders(helm: Helm) -> None:
    [command] = documented_template_commands()
    argv = shlex.split(command)
    assert "--kube-version" in argv, command
    version = argv[argv.index("--kube-version") + 1]
    argv = [str(CHART_DIR) if a == "helm/kvsched" else a for a in argv[1:]]
    docs = documents(helm.run(*argv).stdout)
    assert {"Deployment", "ClusterRole", "ConfigMap"} <= {d["kind"] for d in docs}
    assert scheduler_image(docs).endswith(":v" + version + (".0" if version.count(".") == 1 else ""))


@pytest.mark.parametrize("kube_version, tag", [
    pytest.param("1.30", "v1.30.0", id="major.minor: the release's first patch"),
    pytest.param("1.30.4", "v1.30.4", id="full version"),
    pytest.param("v1.31.2-eks-1234", "v1.31.2", id="vendor suffix dropped"),
])
def test_the_scheduler_tag_follows_the_kube_version(helm: Helm, kube_version: str, tag: str) -> None:
    docs = documents(helm.template(kube_version=kube_version))
    image = scheduler_image(docs)
    assert re.fullmatch(r"registry\.k8s\.io/kube-scheduler:" + re.escape(tag), image), image

"""Containerfiles: what each image must hold, checked from the files (no container engine here)."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from infra_helpers import REPO, TEMPLATES, load_template, rendered_images, split_image

from pipeline.commands.consumer import LAMBDA_HANDLER

CONTAINERS = REPO / "containers"
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
# What an image may take from the repository: the project (pyproject and README to build it, the `pipeline`
# package), the jobs/ wrappers, its lock, and the collector's own config. Dev tooling (devstack/: moto, the
# generator, the fault proxy) and tests never ship.
IMAGE_SOURCES = ("pyproject.toml", "README.md", "pipeline/", "jobs/", "containers/requirements-", "collector/")
DEV_ONLY = ("devstack", "tests", "bench", "notebooks", ".")
ALL = ["Containerfile.api", "Containerfile.collector", "Containerfile.processor", "Containerfile.ray"]


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (CONTAINERS / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def stages(name: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for op, rest in instructions(name):
        if op == "FROM":
            result.append([])
        if result:
            result[-1].append((op, rest))
    return result


def test_containerfiles_present() -> None:
    assert {p.name for p in CONTAINERS.iterdir()} >= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_copy_sources_exist_in_the_build_context(name: str) -> None:
    """Images build from the repository root (podman build -f containers/<file> .).

    pyproject's readme is copied wherever the package is pip-installed (setuptools refuses to build
    without it); its existence is the README owner's, and `make`'s own pip install fails without it."""
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    sources = []
    for op, rest in instructions(name):
        if op == "COPY" and "--from=" not in rest:
            sources += [a for a in rest.split() if not a.startswith("--")][:-1]
        if op == "RUN" and "pip install" in rest and rest.endswith(" ."):
            assert readme in sources and "pyproject.toml" in sources, f"{name}: pip install . without its files"
    assert sources
    for src in sources:
        assert src == readme or (REPO / src).exists(), f"{name}: COPY source {src} is not in the repository"


@pytest.mark.parametrize("name", ALL)
def test_images_copy_the_production_package_and_no_dev_tooling(name: str) -> None:
    """Only what the wheel and the jobs/ wrappers need goes in; `COPY . .` or devstack/ would put the moto
    server, the generator and the fault proxy into a production image."""
    for op, rest in instructions(name):
        if op in ("COPY", "ADD") and "--from=" not in rest:
            for src in [a for a in rest.split() if not a.startswith("--")][:-1]:
                assert src.rstrip("/").split("/")[0] not in DEV_ONLY, f"{name}: COPY {src}"
                assert src.startswith(IMAGE_SOURCES), f"{name}: COPY {src} is not part of the production package"


def test_processor_copies_vector_from_the_collector_and_runs_as_non_root() -> None:
    st = stages("Containerfile.processor")
    collector_stage = st[0][0][1]
    assert collector_stage.endswith("AS collector")
    final = st[-1]
    copies = [rest for op, rest in final if op == "COPY"]
    assert any(c.startswith("--from=collector /usr/bin/vector ") for c in copies)
    users = [rest for op, rest in final if op == "USER"]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root uid, so runAsNonRoot can verify it"
    # The Deployment runs the image with the same uid.
    dep = yaml.safe_load((REPO / "k8s" / "consumer" / "deployment.yaml").read_text())
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)
    # The installed console script (pyproject's [project.scripts]), not a file of the checkout.
    entry = [rest for op, rest in final if op == "ENTRYPOINT"][-1]
    assert entry == '["log-consumer"]'
    assert SCRIPTS["log-consumer"] == "pipeline.commands.consumer:main"
    # Lambda runs the runtime interface client the image installs.
    build = "\n".join(rest for op, rest in st[1] if op == "RUN")
    assert "-r requirements-processor.txt" in build
    assert re.search(r"^awslambdaric==", (CONTAINERS / "requirements-processor.txt").read_text(), re.MULTILINE)
    fn = load_template(TEMPLATES["lambda"])["Resources"]["LogDistributorFunction"]["Properties"]
    assert fn["ImageConfig"]["EntryPoint"] == ["python", "-m", "awslambdaric"]
    assert fn["ImageConfig"]["Command"] == [LAMBDA_HANDLER]


def test_api_image_serves_the_api_as_the_deployment_s_non_root_user_and_runs_the_lambda() -> None:
    build, final = stages("Containerfile.api")
    assert any(op == "RUN" and "-r requirements-api.txt" in rest for op, rest in build)
    users = [rest for op, rest in final if op == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root uid, so runAsNonRoot can verify it"
    api = yaml.safe_load_all((REPO / "k8s" / "consumer" / "tenant-api.yaml").read_text())
    (dep,) = [o for o in api if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    (c,) = pod["containers"]
    assert split_image(c["image"])[0] == "log-tenant-api"
    assert [rest for op, rest in final if op == "ENTRYPOINT"][-1] == '["log-tenants"]' == f'["{c["command"][0]}"]'
    # Neither Vector nor the jobs/ wrappers: the API image holds the package and its locked dependencies.
    assert not [rest for op, rest in final if op == "COPY" and ("vector" in rest or "jobs/" in rest)]
    # The tenant-api stack's function runs the Lambda runtime interface client from this image.
    assert re.search(r"^awslambdaric==", (CONTAINERS / "requirements-api.txt").read_text(), re.MULTILINE)
    fn = load_template(TEMPLATES["tenant-api"])["Resources"]["TenantApiFunction"]["Properties"]
    assert fn["ImageConfig"]["EntryPoint"] == ["python", "-m", "awslambdaric"]
    assert fn["ImageConfig"]["Command"] == ["pipeline.api.lambda_handler.handler"]


def test_collector_image_is_vector() -> None:
    (st,) = stages("Containerfile.collector")
    assert "timberio/vector:" in st[0][1]
    assert [rest for op, rest in st if op == "ENTRYPOINT"] == ['["/usr/bin/vector"]']


def test_ray_image_installs_the_replay_and_runs_as_the_ray_user() -> None:
    (st,) = stages("Containerfile.ray")
    assert "rayproject/ray:" in st[0][1]
    assert any(op == "RUN" and "-r requirements-ray.txt" in rest for op, rest in st)
    assert any(op == "COPY" and "jobs/" in rest for op, rest in st)
    users = [rest for op, rest in st if op == "USER"]
    assert users and users[-1] == "1000"
    rc = yaml.safe_load((REPO / "k8s" / "kuberay" / "raycluster.yaml").read_text())
    for group in [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]:
        assert group["template"]["spec"]["securityContext"]["runAsUser"] == 1000


def test_images_the_manifests_run_are_the_ones_built_here() -> None:
    """The image names in the seed's build commands (podman build -t NAME) are the ones the manifests use."""
    built = {}
    for f in CONTAINERS.iterdir():
        for file, image in re.findall(r"-f containers/(\S+) -t (\S+?):", f.read_text()):
            if file == f.name:
                built[file] = image
    assert built == {
        "Containerfile.api": "log-tenant-api",
        "Containerfile.collector": "log-collector",
        "Containerfile.processor": "log-processor",
        "Containerfile.ray": "log-replay-ray",
    }
    images = {split_image(i)[0] for i in rendered_images()}
    assert images - {"registry.k8s.io/kubectl"} == set(built.values())

"""Reproducible images: the Containerfiles install third-party packages only from the hashed lockfiles
(`make lock`), the locks cover what pyproject asks for, base images are pinned, and one place (the
k8s/images component) sets every image the manifests run, the backfill's RayJob template included.
Each image installs only what it runs: the web stack (the api extra) is in the tenant API's lock alone, and
no module the other images run imports it. Checked from the files; no image is built here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from infra_helpers import (
    IMAGE_KUSTOMIZATIONS,
    REPO,
    embedded_objects,
    render_kustomization,
    rendered_images,
    split_image,
)
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_infra_containerfiles import CONTAINERS, instructions, stages

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Image -> (its lock, the pyproject extras it installs). The Makefile's lock target must agree.
IMAGES = {
    "Containerfile.api": ("requirements-api.txt", ["api"]),
    "Containerfile.processor": ("requirements-processor.txt", ["consumer"]),
    "Containerfile.ray": ("requirements-ray.txt", ["replay"]),
}
# The tenant API's web stack (the api extra and what only it pulls in): in the API image only.
WEB_STACK = {"fastapi", "uvicorn", "mangum", "starlette"}
# The platform the locks are resolved for (the images'), to evaluate pyproject's markers.
IMAGE_ENV = default_environment() | {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11"}
IMAGES_COMPONENT = REPO / "k8s" / "images" / "kustomization.yaml"


def lock_pins(name: str) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, hashes)} of a uv/pip-compile lockfile."""
    text = re.sub(r"\\\n", " ", (CONTAINERS / name).read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?==(\S+)((?:\s+--hash=\S+)*)", line)
        assert m, f"{name}: not an exact pin: {line[:80]}"
        hashes = re.findall(r"--hash=(\S+)", m.group(4))
        pins[canonicalize_name(m.group(1))] = (m.group(3), hashes)
    return pins


def requirements_of(extras: list[str], infile: str) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    for line in (CONTAINERS / infile).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            reqs.append(Requirement(line))
    return [r for r in reqs if r.marker is None or r.marker.evaluate(IMAGE_ENV)]


def ray_version() -> str:
    (version,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", (CONTAINERS / "Containerfile.ray").read_text(), re.MULTILINE)
    return version


@pytest.mark.parametrize("containerfile", sorted(IMAGES))
def test_image_installs_the_hashed_lock_then_the_project_without_dependencies(containerfile: str) -> None:
    lock, _ = IMAGES[containerfile]
    stage = next(st for st in stages(containerfile) if any("pip install" in rest for op, rest in st))
    installs = [(i, rest) for i, (op, rest) in enumerate(stage) if op == "RUN" and "pip install" in rest]
    assert len(installs) == 2, f"{containerfile}: one install of the lock, one of the project: {installs}"
    (i_lock, from_lock), (i_project, project) = installs
    assert re.search(rf"--require-hashes\b.*-r {re.escape(lock)}$", from_lock), from_lock
    assert "--only-binary=:all:" in from_lock, "wheels only, as the lock is resolved (no unhashed build tools)"
    copied = [
        i for i, (op, rest) in enumerate(stage) if op == "COPY" and rest.split()[-2:] == [f"containers/{lock}", "./"]
    ]
    assert copied and copied[0] < i_lock, f"{containerfile}: the lock must be copied before it is installed"
    assert project.endswith(" .") and "--no-deps" in project.split(), project
    assert "--no-build-isolation" in project.split(), "the locked setuptools builds the project, no fetched one"
    assert i_lock < i_project


@pytest.mark.parametrize("containerfile", sorted(IMAGES))
def test_lock_pins_with_hashes_everything_pyproject_asks_for(containerfile: str) -> None:
    lock, extras = IMAGES[containerfile]
    pins = lock_pins(lock)
    infile = lock.replace(".txt", ".in")
    for req in requirements_of(extras, infile):
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock}: {req} is not locked; run `make lock`"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"{lock}: {name}=={version} violates {req}"
    for name, (version, hashes) in pins.items():
        assert hashes and all(h.startswith("sha256:") for h in hashes), f"{lock}: {name}=={version} has no hashes"
    assert "make lock" in (CONTAINERS / lock).read_text().split("\n", 3)[1], "the header names how to regenerate"


def test_ray_lock_keeps_the_base_image_ray() -> None:
    """pip keeps the base image's ray only if the lock pins that very version."""
    assert lock_pins("requirements-ray.txt")["ray"][0] == ray_version()
    assert "ray" not in lock_pins("requirements-processor.txt"), "the processor image has no use for ray"
    # The tenant API submits jobs over Ray's REST API (pipeline/replay/submit.py): no ray wheel in it either.
    assert "ray" not in lock_pins("requirements-api.txt"), "the API image talks HTTP to Ray, it needs no ray"
    # Nor pyarrow (170 MB installed): only the consumer and the replay write Parquet deliveries.
    assert "pyarrow" not in lock_pins("requirements-api.txt")
    assert {"pyarrow"} <= set(lock_pins("requirements-processor.txt")) & set(lock_pins("requirements-ray.txt"))


def test_the_web_stack_is_the_api_extra_and_only_the_api_image_installs_it() -> None:
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    core = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert not core & WEB_STACK, f"the core dependencies hold the API's web stack: {core & WEB_STACK}"
    assert {canonicalize_name(Requirement(r).name) for r in extras["api"]} == WEB_STACK - {"starlette"}
    assert any("api" in Requirement(r).extras for r in extras["dev"]), "the dev extra installs the API's too"
    # The consumer's image (and the Lambda it serves) and the replay's hold none of it; the API's all of it.
    for lock in ("requirements-processor.txt", "requirements-ray.txt"):
        assert not set(lock_pins(lock)) & WEB_STACK, f"{lock}: {set(lock_pins(lock)) & WEB_STACK}"
    assert set(lock_pins("requirements-api.txt")) >= WEB_STACK


def test_no_module_outside_the_api_package_imports_the_web_stack() -> None:
    """Every module of `pipeline` but pipeline/api/ imports with FastAPI, uvicorn, Mangum and Starlette made
    unimportable, so the consumer and the replay run in images without them (`log-tenants serve` imports
    them when it serves, the Lambda handler is the API image's)."""
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "pipeline").rglob("*.py")
        if p.relative_to(REPO).parts[:2] != ("pipeline", "api") or p.name == "__init__.py"
    )
    assert "pipeline.commands.consumer" in modules and "pipeline.replay.job" in modules
    import_without(modules, WEB_STACK)


def test_the_api_image_s_entry_points_import_without_the_other_images_extras() -> None:
    """The API image has the api extra only: no Ray (replays go to the Jobs REST API), no Prometheus client,
    no pyarrow, tqdm or smart_open. Its server, its Lambda handler and the replay service behind its routes import
    without them (tests/integration/test_replay_store.py exercises the routes)."""
    others = {
        canonicalize_name(Requirement(r).name).replace("-", "_")
        for extra in ("replay", "consumer")
        for r in PYPROJECT["project"]["optional-dependencies"][extra]
    }
    assert {"ray", "prometheus_client", "tqdm", "smart_open", "pyarrow"} <= others
    entry = [
        "pipeline.api.server",
        "pipeline.api.lambda_handler",
        "pipeline.commands.tenants",
        "pipeline.replay.service",
    ]
    import_without(entry, others)


def import_without(modules: list[str], blocked: set[str]) -> None:
    """Import `modules` in a fresh interpreter where the `blocked` top-level packages cannot be imported."""
    script = (
        "import importlib, sys\n"
        f"for name in {sorted(blocked)!r}:\n"
        "    sys.modules[name] = None  # import raises ImportError\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_make_lock_regenerates_both_locks_with_the_images_extras() -> None:
    text = re.sub(r"\\\n\s*", " ", (REPO / "Makefile").read_text())
    assert re.search(r"^lock:", text, re.MULTILINE)
    recipe = text.split("\nlock:", 1)[1].split("\n\n", 1)[0]
    flags = re.search(r"^LOCK_FLAGS\s*=(.*)$", text, re.MULTILINE).group(1)
    assert "--generate-hashes" in flags and "--only-binary :all:" in flags
    for lock, extras in IMAGES.values():
        (cmd,) = [line for line in recipe.splitlines() if f"-o containers/{lock}" in line]
        assert "pip compile" in cmd and "pyproject.toml" in cmd and f"containers/{lock.replace('.txt', '.in')}" in cmd
        assert re.findall(r"--extra (\S+)", cmd) == extras


def test_no_latest_tag_anywhere() -> None:
    offenders = [
        f"{p.relative_to(REPO)}:{n}"
        for root in ("containers", "k8s", "collector")
        for p in (REPO / root).rglob("*")
        if p.is_file()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if re.search(r":latest\b", line)
    ]
    assert offenders == []


def base_images(name: str) -> list[str]:
    """The FROM images of a Containerfile, with its ARG defaults substituted."""
    args = {}
    out = []
    for op, rest in instructions(name):
        if op == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k] = v
        elif op == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            out.append(image)
    return out


@pytest.mark.parametrize(
    "name", ["Containerfile.api", "Containerfile.collector", "Containerfile.processor", "Containerfile.ray"]
)
def test_base_images_are_pinned_to_an_exact_release(name: str) -> None:
    built_here = {"log-collector", "log-processor", "log-replay-ray", "log-tenant-api"}
    for image in base_images(name):
        repo, ref = split_image(image)
        assert ref, f"{name}: {image} has no tag"
        if repo in built_here:
            continue
        # A digest, or a tag naming a full x.y.z release (not 3.11, not a moving alias).
        assert ref.startswith("@sha256:") or re.match(r":v?\d+\.\d+\.\d+", ref), f"{name}: {image} is not exact"


def retag_component(root: Path) -> dict[str, str]:
    """Point every image of the k8s/images copy under root elsewhere; return {name: new image}."""
    path = root / IMAGES_COMPONENT.relative_to(REPO)
    comp = yaml.safe_load(path.read_text())
    expected = {}
    for img in comp["images"]:
        img["newName"] = f"registry.example.com/retag/{img['name'].rsplit('/', 1)[-1]}"
        img["newTag"] = "9.9.9-retag"
        expected[img["name"]] = f"{img['newName']}:{img['newTag']}"
    path.write_text(yaml.safe_dump(comp))
    return expected


def copy_manifests(tmp_path: Path) -> Path:
    for d in ("k8s", "collector"):
        shutil.copytree(REPO / d, tmp_path / d)
    return tmp_path


def test_manifests_run_the_images_the_component_sets() -> None:
    comp = yaml.safe_load(IMAGES_COMPONENT.read_text())
    expected = {f"{i['newName']}:{i['newTag']}" for i in comp["images"]}
    assert set(rendered_images()) == expected


def test_one_place_retags_every_image_including_the_backfill_template(tmp_path: Path) -> None:
    root = copy_manifests(tmp_path)
    expected = retag_component(root)
    images = rendered_images(root)
    assert set(images) == set(expected.values()), "every image, and only those, from k8s/images"
    templates = embedded_objects(render_kustomization(root / "k8s" / "kuberay"))
    assert {t["kind"] for t in templates} == {"RayJob"} and len(templates) == 2
    for job in templates:
        spec = job["spec"]
        pods = [spec["submitterPodTemplate"], spec["rayClusterSpec"]["headGroupSpec"]["template"]]
        pods += [g["template"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]]
        for pod in pods:
            for c in pod["spec"]["containers"]:
                assert c["image"] == expected["log-replay-ray"], job["metadata"]["generateName"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_real_kustomize_retags_the_same_way(tmp_path: Path) -> None:
    """The renderer the tests use is a reimplementation: kustomize itself must agree with it."""
    root = copy_manifests(tmp_path)
    expected = retag_component(root)
    for d in IMAGE_KUSTOMIZATIONS:
        out = subprocess.run(["kubectl", "kustomize", str(root / d)], capture_output=True, text=True, check=True)
        objs = [o for o in yaml.safe_load_all(out.stdout) if o]
        images = set(rendered_images(root, {d: objs}))
        assert images and images <= set(expected.values()), f"{d}: {images}"
        if d == "k8s/kuberay":
            assert len(embedded_objects(objs)) == 2
            assert images == {expected["log-replay-ray"], expected["registry.k8s.io/kubectl"]}

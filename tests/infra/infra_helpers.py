"""Helpers for the infrastructure tests: template loading, intrinsic resolution, a tiny kustomize.

Imported by the tests in this folder (pytest puts the folder on sys.path); no project code is mocked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from cfnlint.decode import decode_str

REPO = Path(__file__).resolve().parents[2]
CFN_DIR = REPO / "infra" / "cloudformation"
TEMPLATES = {
    "global": CFN_DIR / "global" / "central-log-distribution-role.yaml",
    "core": CFN_DIR / "regional" / "core-infrastructure.yaml",
    "sqs": CFN_DIR / "regional" / "sqs-stack.yaml",
    "lambda": CFN_DIR / "regional" / "lambda-stack.yaml",
    "tenant-api": CFN_DIR / "regional" / "tenant-api.yaml",
    "customer": CFN_DIR / "customer" / "customer-log-distribution-role.yaml",
    "cluster": CFN_DIR / "cluster" / "cluster-iam-roles.yaml",
    "replay": CFN_DIR / "cluster" / "replay-role.yaml",
}
ACCOUNT = "123456789012"
REGION = "us-east-1"


# --- CloudFormation -------------------------------------------------------------------------------


def load_template(path: Path) -> dict[str, Any]:
    """A template with its short-form tags (!Sub, !Ref...) decoded as cfn-lint does."""
    template, matches = decode_str(path.read_text())
    assert not matches, f"{path} does not parse: {matches}"
    return json.loads(json.dumps(template))  # plain dicts, no cfn-lint node classes


def template_params(template: Mapping[str, Any], overrides: Mapping[str, str] | None = None) -> dict[str, Any]:
    params = {k: v.get("Default") for k, v in template.get("Parameters", {}).items()}
    params.update(overrides or {})
    return params


NO_VALUE = object()  # Ref AWS::NoValue: dropped from the dict or list that holds it


class Resolver:
    """Resolves the intrinsic functions the templates use, for static checks.

    A Ref to a resource becomes "<Logical>", a GetAtt "<Logical.Attr>", so a test can see *which*
    resource a policy points at. Conditions are evaluated with the parameters given: an !If takes the
    branch CloudFormation would, and `exists` tells whether a resource or output is created at all.
    """

    def __init__(self, template: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        self.resources = template.get("Resources", {})
        self.outputs = template.get("Outputs", {})
        self.conditions = template.get("Conditions", {})
        self._evaluated: dict[str, bool] = {}
        self.values: dict[str, Any] = {
            "AWS::AccountId": ACCOUNT,
            "AWS::Region": REGION,
            "AWS::Partition": "aws",
            "AWS::StackName": "stack",
            "AWS::NoValue": NO_VALUE,
            **params,
        }

    def condition(self, name: str) -> bool:
        if name not in self._evaluated:
            self._evaluated[name] = self._evaluate(self.conditions[name])
        return self._evaluated[name]

    def _evaluate(self, node: Mapping[str, Any]) -> bool:
        ((fn, arg),) = node.items()
        if fn == "Condition":
            return self.condition(arg)
        if fn == "Fn::Equals":
            left, right = (self(x) for x in arg)
            return str(left) == str(right)
        if fn == "Fn::Not":
            return not self._evaluate(arg[0])
        if fn == "Fn::And":
            return all(self._evaluate(x) for x in arg)
        if fn == "Fn::Or":
            return any(self._evaluate(x) for x in arg)
        raise KeyError(f"unsupported condition function {fn}")

    def exists(self, logical: str) -> bool:
        """Whether CloudFormation creates this resource (or output) with these parameters."""
        entry = self.resources.get(logical) or self.outputs[logical]
        return "Condition" not in entry or self.condition(entry["Condition"])

    def active_resources(self) -> dict[str, Any]:
        return {name: res for name, res in self.resources.items() if self.exists(name)}

    def active_outputs(self) -> dict[str, Any]:
        return {name: self(out["Value"]) for name, out in self.outputs.items() if self.exists(name)}

    def ref(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name in self.resources:
            return f"<{name}>"
        raise KeyError(f"unresolvable Ref {name}")

    def sub(self, text: str, extra: Mapping[str, Any] | None = None) -> str:
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if extra and name in extra:
                return str(extra[name])
            if "." in name:
                return f"<{name}>"
            return str(self.ref(name))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self(n) for n in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), *_ = node.items()
            if fn == "Ref":
                return self.ref(arg)
            if fn == "Fn::GetAtt":
                parts = arg if isinstance(arg, list) else arg.split(".", 1)
                return f"<{parts[0]}.{parts[1]}>"
            if fn == "Fn::Sub":
                if isinstance(arg, list):
                    return self.sub(arg[0], {k: self(v) for k, v in arg[1].items()})
                return self.sub(arg)
            if fn == "Fn::Select":
                return self(arg[1])[int(self(arg[0]))]
            if fn == "Fn::Split":
                return self(arg[1]).split(arg[0])
            if fn == "Fn::Join":
                return arg[0].join(str(x) for x in self(arg[1]))
            if fn == "Fn::If":
                return self(arg[1] if self.condition(arg[0]) else arg[2])
        resolved = {k: self(v) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}


def policy_document(resolved: Any) -> dict[str, Any]:
    """Policy documents may be JSON strings (the IRSA trusts are, for their OIDC condition keys)."""
    return json.loads(resolved) if isinstance(resolved, str) else resolved


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def iter_policies(template: Mapping[str, Any], params: Mapping[str, Any]) -> Iterator[tuple[str, str, dict]]:
    """(resource, kind, document) for every IAM/resource policy in a template, resolved."""
    resolve = Resolver(template, params)
    for name, res in template.get("Resources", {}).items():
        props = res.get("Properties", {})
        kind = res["Type"]
        if kind == "AWS::IAM::Role":
            yield name, "trust", policy_document(resolve(props["AssumeRolePolicyDocument"]))
            for p in props.get("Policies", []):
                yield name, "identity", policy_document(resolve(p["PolicyDocument"]))
        elif kind in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            yield name, "identity", policy_document(resolve(props["PolicyDocument"]))
        elif kind == "AWS::KMS::Key":
            yield name, "resource", policy_document(resolve(props["KeyPolicy"]))
        elif "PolicyDocument" in props:
            yield name, "resource", policy_document(resolve(props["PolicyDocument"]))


# --- Kubernetes -----------------------------------------------------------------------------------

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "SecurityContextConstraints",
    "CustomResourceDefinition",
}


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize applies it to the fields these manifests patch: maps merge
    recursively, lists of named maps (containers, volumes, env...) merge by name, other lists replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            for i, existing in enumerate(out):
                if existing["name"] == item["name"]:
                    out[i] = _merge(existing, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
        yield spec["template"]["spec"]
    elif obj["kind"] == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif obj["kind"] == "Pod":
        yield spec


def configmap_refs(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every dict in a pod spec whose "name" names a ConfigMap."""
    for vol in pod_spec.get("volumes", []):
        if "configMap" in vol:
            yield vol["configMap"]
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        for src in c.get("envFrom", []):
            if "configMapRef" in src:
                yield src["configMapRef"]
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                yield ref


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization the way `kustomize build` does, for the features this repo uses:
    resources (files and directories), components (with images), namespace, configMapGenerator (files,
    literals, the name hash and its rewrite into workload references), generatorOptions.disableNameSuffixHash,
    images, strategic-merge patches and replacements (whole values, or one delimited part). Anything else
    in a kustomization.yaml fails the render loudly. Order as kustomize's: resources, then components'
    transformers, then generators, patches, namespace, images, replacements."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    supported = {
        "apiVersion",
        "kind",
        "resources",
        "namespace",
        "configMapGenerator",
        "generatorOptions",
        "images",
        "patches",
        "components",
        "replacements",
    }
    unknown = set(kust) - supported
    assert not unknown, f"{directory}: kustomization fields this renderer does not implement: {unknown}"

    objs: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        path = (directory / res).resolve()
        objs.extend(render_kustomization(path) if path.is_dir() else load_docs(path))

    for comp in kust.get("components", []):
        comp_kust = yaml.safe_load(((directory / comp) / "kustomization.yaml").read_text())
        assert comp_kust["kind"] == "Component"
        unknown = set(comp_kust) - {"apiVersion", "kind", "images"}
        assert not unknown, f"{comp}: component fields this renderer does not implement: {unknown}"
        set_images(objs, comp_kust.get("images", []))

    hash_names = not kust.get("generatorOptions", {}).get("disableNameSuffixHash", False)
    renames: dict[str, str] = {}
    for gen in kust.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for f in gen.get("files", []):
            key, _, fname = f.rpartition("=") if "=" in f else (Path(f).name, "", f)
            data[key] = (directory / fname).read_text()
        for lit in gen.get("literals", []):
            k, _, v = lit.partition("=")
            data[k] = v
        name = gen["name"]
        if hash_names:
            digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
            renames[name] = f"{name}-{digest}"
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": renames.get(name, name)}, "data": data}
        objs.append(cm)

    for patch in kust.get("patches", []):
        assert set(patch) == {"path"}, f"only file patches are implemented: {patch}"
        p = yaml.safe_load((directory / patch["path"]).read_text())
        targets = [o for o in objs if o["kind"] == p["kind"] and o["metadata"]["name"] == p["metadata"]["name"]]
        assert len(targets) == 1, f"patch {patch['path']} matches {len(targets)} objects"
        objs[objs.index(targets[0])] = _merge(targets[0], p)

    for obj in objs:
        if "namespace" in kust and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = kust["namespace"]
        if "namespace" in kust and obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = kust["namespace"]
        for pod in _pod_specs(obj):
            for ref in configmap_refs(pod):
                ref["name"] = renames.get(ref["name"], ref["name"])
    set_images(objs, kust.get("images", []))
    for replacement in kust.get("replacements", []):
        _replace(objs, replacement)
    return objs


def split_image(image: str) -> tuple[str, str]:
    """("registry:5000/repo", ":tag" or "@sha256:..." or "")."""
    if "@" in image:
        name, _, digest = image.partition("@")
        return name, "@" + digest
    name, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return name, ":" + tag
    return image, ""


def _containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every container anywhere in an object, as kustomize's images transformer finds them: any list
    under a field named containers or initContainers (so RayCluster and RayJob pods too)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict) and "image" in c)
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def set_images(objs: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
    for obj in objs:
        for c in _containers(obj):
            name, ref = split_image(c["image"])
            for img in images:
                if name == img["name"]:
                    if "digest" in img:
                        ref = "@" + img["digest"]
                    elif "newTag" in img:
                        ref = ":" + str(img["newTag"])
                    c["image"] = img.get("newName", name) + ref


def _field_path(path: str) -> list[str]:
    """kustomize's fieldPath: dot-separated, with [key.with.dots] and [name=value] segments."""
    return [a or b for a, b in re.findall(r"\[([^\]]+)\]|([^.\[\]]+)", path)]


def _walk(node: Any, segment: str) -> Any:
    if isinstance(node, list):
        if "=" in segment:
            key, _, value = segment.partition("=")
            (match,) = [x for x in node if str(x.get(key)) == value]
            return match
        return node[int(segment)]
    return node[segment]


def _selects(obj: dict[str, Any], select: dict[str, Any]) -> bool:
    assert set(select) <= {"kind", "name", "namespace"}, f"unsupported selector: {select}"
    fields = {"kind": obj["kind"], **obj["metadata"]}
    return all(fields.get(k) == v for k, v in select.items())


def _replace(objs: list[dict[str, Any]], replacement: dict[str, Any]) -> None:
    source = dict(replacement["source"])
    *path, last = _field_path(source.pop("fieldPath", "metadata.name"))
    (src,) = [o for o in objs if _selects(o, source)]
    node = src
    for seg in path:
        node = _walk(node, seg)
    value = node[last]
    for target in replacement["targets"]:
        assert set(target) <= {"select", "fieldPaths", "options"}, f"unsupported target fields: {target}"
        options = target.get("options", {})
        assert set(options) <= {"delimiter", "index"}, f"unsupported options: {options}"
        selected = [o for o in objs if _selects(o, target["select"])]
        assert selected, f"replacement target {target['select']} selects nothing"
        for obj in selected:
            for fp in target["fieldPaths"]:
                *path, last = _field_path(fp)
                node = obj
                for seg in path:
                    node = _walk(node, seg)
                new = value
                if "delimiter" in options:
                    parts = node[last].split(options["delimiter"])
                    # kustomize would prepend or append out of range: never what these manifests mean.
                    assert 0 <= options.get("index", 0) < len(parts), f"{fp}: no part {options.get('index')}"
                    parts[options.get("index", 0)] = str(value)
                    new = options["delimiter"].join(parts)
                node[last] = new


# The kustomizations that run the project's images; k8s/images sets the images of all of them.
IMAGE_KUSTOMIZATIONS = (
    "collector/vector/base",
    "collector/vector/overlays/openshift",
    "k8s/consumer",
    "k8s/kuberay",
    "k8s/canary",
)


def embedded_objects(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects kept as YAML text in ConfigMaps (the RayJob templates), parsed."""
    out = []
    for o in objs:
        if o["kind"] == "ConfigMap":
            for key, text in o.get("data", {}).items():
                if key.endswith((".yaml", ".yml")):
                    out += [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and "kind" in d]
    return out


def rendered_images(root: Path = REPO, objs_by_dir: dict[str, list[dict[str, Any]]] | None = None) -> list[str]:
    """Every container image the project's kustomizations deploy, including the ConfigMap templates'."""
    if objs_by_dir is None:
        objs_by_dir = {d: render_kustomization(root / d) for d in IMAGE_KUSTOMIZATIONS}
    images = []
    for objs in objs_by_dir.values():
        images += [c["image"] for o in objs + embedded_objects(objs) for c in _containers(o)]
    return images

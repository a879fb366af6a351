"""Checks a Vector configuration against Vector's own configuration reference, without a `vector` binary.

The reference is Vector 0.58's option schema as JSON (generated from vectordotdev/vector's CUE reference,
with hand-added facts from its Rust source), vendored in tests/support/vector-reference/ for the component
types this project uses: its README.md says how the files are shaped and how to walk them, VENDORED.md
where they come from. `validate(config)` returns one human-readable line per error, each starting with the
option's path (`sinks.cloudwatch.encodign: unknown option`); an empty list means the config matches.

What it checks, at every depth:
- option names: each key is a known option, or a key of a map (`additional`); a near miss is suggested;
- the component `type`: one the reference describes (else "no reference for component type X");
- value types, as the reference's kinds (string, uint, int, float, bool, ascii_char, timestamp, object,
  array, condition, `*`), and string enums;
- Vector's environment interpolation (`${VAR}`, `${VAR:-default}`, `${VAR:?error}`, `$VAR`, `$$`): a value
  that is one whole reference fits any scalar kind (after interpolation it may be a number), a default is
  checked as the value it stands for, and a string with a part Vector fills in from the environment fits
  string kinds without its enum being checked;
- templates: `{{ field }}` only in options the reference marks `syntax: template` (or whose description
  says they support templating), since anywhere else Vector keeps it literally;
- required options, `required_when` (a disk buffer's `max_size`), options that only apply for a sibling's
  value (`relevant_when`: `encoding.json` with `codec: text`), `required_one_of` (remap's program);
- AWS `auth`: the keys must fit exactly one of the variants (access key, credentials file, role, default);
- buffers: a memory buffer takes `max_events` or `max_size`, not both; a disk buffer's `max_size` is at
  least Vector's minimum; a list of buffer stages is checked stage by stage;
- conditions: a VRL string, or `{type, source}` with a known type;
- the graph: at least one source and one sink, component ids unique across kinds, every `inputs` entry
  naming a source or transform (or a transform's named output, or a wildcard that matches one).

Nothing inside a VRL program, template or strftime format is checked (see the reference's Caveats).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any, Final

import yaml

REFERENCE_DIR: Final = Path(__file__).resolve().parent / "vector-reference"
COMPONENT_KINDS: Final = ("sources", "transforms", "sinks")
# lib/vector-buffers: a disk buffer must hold at least one maximum-sized record plus its data file header.
MIN_DISK_BUFFER_BYTES: Final = 268_435_488
U64_MAX: Final = 2**64 - 1
I64_RANGE: Final = range(-(2**63), 2**63)

Node = Mapping[str, Any]

SCALAR_KINDS: Final = frozenset({"string", "ascii_char", "timestamp", "uint", "int", "float", "bool", "condition"})
STRING_KINDS: Final = frozenset({"string", "ascii_char", "timestamp", "condition"})
# Vector's interpolation (src/config/vars.rs): $$ is a literal $, then $VAR, then ${VAR} with an optional
# default (`:-` when unset or empty, `-` when unset) or error message (`:?`, `?`).
ENV_REFERENCE: Final = re.compile(r"\$\$|\$\{([\w.]+)(?:(:?[-?])([^}]*))?\}|\$([\w.]+)")
TEMPLATE: Final = re.compile(r"\{\{.*?\}\}", re.DOTALL)
# Templated options the CUE does not mark with `syntax: template` say so (HTTP request headers).
TEMPLATED: Final = re.compile(r"\bsupports? templating\b")
COMPONENT_TYPE: Final = re.compile(r"[a-z0-9_]+")


class _Unknown:
    """A value known only at run time (an environment variable without a default)."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN: Final = _Unknown()


# --------------------------------------------------------------------------------------------------
# The reference files
# --------------------------------------------------------------------------------------------------


class Reference:
    """The vendored reference: global.json, index.json and one file per component type."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.index: dict[str, Any] = json.loads((directory / "index.json").read_text())
        self.global_options: dict[str, Any] = json.loads((directory / "global.json").read_text())["options"]
        self._components: dict[str, dict[str, Any] | None] = {}

    def component(self, ref: str) -> dict[str, Any] | None:
        """The file for `sinks/aws_s3.json`, or None when it is not vendored."""
        if ref not in self._components:
            path = self.directory / ref
            self._components[ref] = json.loads(path.read_text()) if path.is_file() else None
        return self._components[ref]

    def indexed(self, ref: str) -> bool:
        """Whether the reference this copy was taken from has the file (vendored here or not)."""
        return ref in self.index["files"]

    def vendored_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.directory)) for p in self.directory.glob("*/*.json"))


@cache
def load_reference(directory: Path = REFERENCE_DIR) -> Reference:
    return Reference(directory)


def count_options(options: Mapping[str, Node]) -> int:
    """Named options at every depth, as index.json's `option_count` counts them."""
    total = 0
    for node in options.values():
        total += 1 + _count_children(node)
    return total


def _count_children(node: Node) -> int:
    total = 0
    for kind, detail in node.get("types", {}).items():
        if kind == "object":
            total += count_options(detail.get("options", {}))
            if "additional" in detail:
                total += _count_children(detail["additional"])
        elif kind == "array" and "items" in detail and "items_same_as" not in detail:
            total += _count_children(detail["items"])
    return total


# --------------------------------------------------------------------------------------------------
# Environment interpolation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interpolation:
    """What Vector's environment interpolation makes of a string, as far as it can be known statically."""

    whole: bool  # the string is one ${VAR} reference and nothing else
    resolved: str | _Unknown  # the text with every default applied, or UNKNOWN


def interpolation(text: str) -> Interpolation | None:
    """None when the string has nothing Vector would interpolate."""
    matches = list(ENV_REFERENCE.finditer(text))
    if not matches:
        return None
    unknown = False
    parts: list[str] = []
    last = 0
    for m in matches:
        parts.append(text[last : m.start()])
        last = m.end()
        if m.group(0) == "$$":
            parts.append("$")
        elif m.group(2) in ("-", ":-"):
            parts.append(m.group(3))
        else:
            unknown = True
    parts.append(text[last:])
    whole = len(matches) == 1 and matches[0].span() == (0, len(text)) and text != "$$"
    return Interpolation(whole, UNKNOWN if unknown else "".join(parts))


# --------------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------------


def validate(config: Any, reference: Reference | None = None) -> list[str]:
    """Every way `config` (a parsed Vector YAML/JSON document) departs from the reference; [] if none."""
    checker = Checker(reference or load_reference())
    if not isinstance(config, Mapping):
        return [f"(top level): a Vector config is a mapping, got {_describe(config)}"]
    errors = checker.check_object(config, {"options": checker.reference.global_options}, "")
    errors += graph_errors(config)
    return errors


class Checker:
    """Walks a value against a reference option node; each method returns the errors it found."""

    def __init__(self, reference: Reference) -> None:
        self.reference = reference

    # -- values ------------------------------------------------------------------------------------

    def check(self, value: Any, node: Node, path: str, *, interpolated: bool = False) -> list[str]:
        types: Mapping[str, Any] = node.get("types", {})
        if "*" in types:
            return []
        if value is None:
            return [f"{path}: null is not a value here (expected {_expected(types)})"]
        if isinstance(value, str) and not interpolated:
            interp = interpolation(value)
            if interp is not None:
                return self._check_interpolated(value, interp, node, path)
        candidates = [kind for kind in types if _fits(kind, value)]
        if not candidates:
            return [f"{path}: expected {_expected(types)}, got {_describe(value)}"]
        first: list[str] | None = None
        for kind in candidates:
            errors = self._check_kind(kind, types[kind], value, node, path)
            if not errors:
                return []
            first = errors if first is None else first
        return first or []

    def _check_interpolated(self, value: str, interp: Interpolation, node: Node, path: str) -> list[str]:
        types: Mapping[str, Any] = node.get("types", {})
        if isinstance(interp.resolved, _Unknown):
            # Known only at run time: whole, it may become any scalar; in part, it is a string.
            if (SCALAR_KINDS if interp.whole else STRING_KINDS) & set(types):
                return []
            return [f"{path}: expected {_expected(types)}, got {_describe(value)}"]
        candidates: list[Any] = [interp.resolved]
        if interp.whole:
            try:
                typed = yaml.safe_load(interp.resolved)
            except yaml.YAMLError:
                typed = interp.resolved
            if typed != interp.resolved:
                candidates.append(typed)  # unquoted in the file, the default is read as a YAML value
        first: list[str] | None = None
        for candidate in candidates:
            errors = self.check(candidate, node, path, interpolated=True)
            if not errors:
                return []
            first = errors if first is None else first
        return [f"{e} (from {value!r})" for e in first or []]

    def _check_kind(self, kind: str, detail: Mapping[str, Any], value: Any, node: Node, path: str) -> list[str]:
        if kind == "string":
            return _check_string(value, detail, node, path)
        if kind == "ascii_char":
            if len(value) == 1 and value.isascii():
                return []
            return [f"{path}: expected one ASCII character, got {value!r}"]
        if kind == "uint" and value > U64_MAX:
            return [f"{path}: {value} is larger than a uint can hold"]
        if kind == "int" and value not in I64_RANGE:
            return [f"{path}: {value} is out of range for an int"]
        if kind == "object":
            return self.check_object(value, detail, path)
        if kind == "array":
            items = detail.get("items")
            if items is None:
                return []
            return [e for i, item in enumerate(value) for e in self.check(item, items, f"{path}[{i}]")]
        if kind == "condition":
            return check_condition(value, detail, path)
        return []  # bool, float, timestamp, and uint/int within range

    # -- objects -------------------------------------------------------------------------------------

    def check_object(self, value: Mapping[Any, Any], detail: Mapping[str, Any], path: str) -> list[str]:
        options: Mapping[str, Node] = detail.get("options", {})
        additional: Node | None = detail.get("additional")
        errors: list[str] = []
        for key, child in value.items():
            child_path = _join(path, key)
            if not isinstance(key, str):
                errors.append(f"{child_path}: option names are strings, got {_describe(key)}")
            elif key in options:
                errors += self._relevance(key, options[key], value, options, child_path)
                errors += self.check(child, options[key], child_path)
            elif additional is not None:
                if "component_ref" in additional:
                    errors += self.check_component(child, additional["component_ref"], child_path)
                else:
                    errors += self.check(child, additional, child_path)
            else:
                errors.append(f"{child_path}: unknown option{_suggestion(key, options)}")
        errors += self._required(value, options, path)
        errors += _required_one_of(value, options, path)
        if "variants" in detail:
            errors += _variant_errors(value, detail["variants"], path)
        return errors

    def _relevance(
        self, key: str, node: Node, value: Mapping[Any, Any], options: Mapping[str, Node], path: str
    ) -> list[str]:
        conditions = node.get("relevant_when_any")
        if not conditions or _matches(conditions, value, options) is not False:
            return []
        field = conditions[0]["field"]
        here = _sibling(value, options, field)
        return [f"{path}: only applies when {node['relevant_when']} (here {field} = {here!r})"]

    def _required(self, value: Mapping[Any, Any], options: Mapping[str, Node], path: str) -> list[str]:
        errors = []
        for name, node in options.items():
            if name in value:
                continue
            required_when = node.get("required_when_any")
            if required_when and _matches(required_when, value, options) is True:
                errors.append(f"{_join(path, name)}: missing required option (required when {node['required_when']})")
            elif node.get("required"):
                relevant = node.get("relevant_when_any")
                if not relevant or _matches(relevant, value, options) is True:
                    errors.append(f"{_join(path, name)}: missing required option")
        return errors

    # -- components ----------------------------------------------------------------------------------

    def check_component(self, value: Any, ref_template: str, path: str) -> list[str]:
        if not isinstance(value, Mapping):
            return [f"{path}: a component is a mapping, got {_describe(value)}"]
        ctype = value.get("type")
        if ctype is None:
            return [f"{path}.type: missing required option"]
        if not isinstance(ctype, str) or not COMPONENT_TYPE.fullmatch(ctype):
            return [f"{path}.type: expected a component type name, got {_describe(ctype)}"]
        ref = ref_template.format(type=ctype)
        component = self.reference.component(ref)
        if component is None:
            if self.reference.indexed(ref):
                why = f"copy {ref} into {self.reference.directory.name}/ (see VENDORED.md there)"
            else:
                kind = ref.split("/", 1)[0]
                known = [Path(f).stem for f in self.reference.vendored_files() if f.startswith(kind + "/")]
                why = f"misspelled, or a component whose reference is not vendored; vendored: {', '.join(known)}"
            return [f"{path}.type: no reference for component type {ctype!r} ({why})"]
        errors = self.check_object(value, {"options": component["options"]}, path)
        if component["kind"] == "sink" and "buffer" in value:
            errors += buffer_errors(value["buffer"], f"{path}.buffer")
        return errors


# --------------------------------------------------------------------------------------------------
# Rules that are not a walk of one node
# --------------------------------------------------------------------------------------------------


def _check_string(value: str, detail: Mapping[str, Any], node: Node, path: str) -> list[str]:
    enum = detail.get("enum")
    if enum is not None and value not in enum:
        return [f"{path}: {value!r} is not one of {', '.join(map(str, enum))}"]
    templated = detail.get("syntax") in ("template", "vrl_program") or bool(
        TEMPLATED.search(node.get("description", ""))
    )
    if not templated and TEMPLATE.search(value):
        return [f"{path}: {{{{ … }}}} is expanded only in template options; Vector would keep {value!r} literally"]
    return []


def check_condition(value: Any, detail: Mapping[str, Any], path: str) -> list[str]:
    """A VRL string, or {type, source}: `object_options` says which keys each type needs."""
    if isinstance(value, str):
        return [] if value.strip() else [f"{path}: an empty condition"]
    allowed: Mapping[str, str] = detail.get("object_options", {})
    errors = [f"{_join(path, k)}: unknown option{_suggestion(str(k), allowed)}" for k in value if k not in allowed]
    ctype = value.get("type")
    types = detail.get("object_type_enum", [])
    if ctype is not None and ctype not in types:
        errors.append(f"{path}.type: {ctype!r} is not one of {', '.join(types)}")
    for name, rule in allowed.items():
        if name in value:
            continue
        needed_for = re.fullmatch(r"required for (.+)", rule)
        if rule == "required" or (needed_for and ctype in re.split(r",\s*|\s+and\s+", needed_for.group(1))):
            errors.append(f"{_join(path, name)}: missing required option")
    return errors


def buffer_errors(buffer: Any, path: str) -> list[str]:
    """The buffer rules the reference's notes state (lib/vector-buffers/src/config.rs)."""
    stages = list(enumerate(buffer)) if isinstance(buffer, list) else [(None, buffer)]
    errors = []
    for i, stage in stages:
        if not isinstance(stage, Mapping):
            continue  # a type error, reported by the walk
        stage_path = path if i is None else f"{path}[{i}]"
        kind = stage.get("type", "memory")
        if kind == "memory" and "max_events" in stage and "max_size" in stage:
            errors.append(f"{stage_path}: a memory buffer takes max_events or max_size, not both")
        size = stage.get("max_size")
        if kind == "disk" and _is_int(size) and size < MIN_DISK_BUFFER_BYTES:
            errors.append(
                f"{stage_path}.max_size: a disk buffer needs at least {MIN_DISK_BUFFER_BYTES} bytes, got {size}"
            )
    return errors


def graph_errors(config: Mapping[str, Any]) -> list[str]:
    """Sources and sinks exist, ids are unique across kinds, and every input names an upstream component."""
    kinds = {kind: config.get(kind) if isinstance(config.get(kind), Mapping) else {} for kind in COMPONENT_KINDS}
    errors = [
        f"{kind}: a Vector config needs at least one {kind[:-1]}" for kind in ("sources", "sinks") if not kinds[kind]
    ]
    seen: dict[str, str] = {}
    for kind, components in kinds.items():
        for cid in components:
            if cid in seen:
                errors.append(f"{kind}.{cid}: the id is already used in {seen[cid]}")
            seen.setdefault(cid, kind)
    upstream = [str(c) for c in [*kinds["sources"], *kinds["transforms"]]]
    transforms = {str(c) for c in kinds["transforms"]}
    for kind in ("transforms", "sinks"):
        for cid, component in kinds[kind].items():
            inputs = component.get("inputs") if isinstance(component, Mapping) else None
            if not isinstance(inputs, list):
                continue  # missing or of the wrong type: reported by the walk
            for i, name in enumerate(inputs):
                if not isinstance(name, str) or _names_upstream(name, upstream, transforms):
                    continue
                errors.append(f"{kind}.{cid}.inputs[{i}]: {name!r} names no source or transform")
    return errors


def _names_upstream(name: str, upstream: Sequence[str], transforms: set[str]) -> bool:
    if "*" in name:
        return any(fnmatchcase(c, name) for c in upstream)
    # A transform's named output (route: `<id>.<route>`) is `<id>.<output>`.
    return name in upstream or ("." in name and name.rsplit(".", 1)[0] in transforms)


def _required_one_of(value: Mapping[Any, Any], options: Mapping[str, Node], path: str) -> list[str]:
    groups = {
        n["required_one_of_group"]: n["required_one_of"] for n in options.values() if "required_one_of_group" in n
    }
    errors = []
    for members in groups.values():
        present = [m for m in members if m in value]
        if len(present) != 1:
            found = ", ".join(present) or "none"
            errors.append(f"{path or '(top level)'}: set exactly one of {', '.join(members)} (found {found})")
    return errors


def _variant_errors(value: Mapping[Any, Any], variants: Sequence[Mapping[str, Any]], path: str) -> list[str]:
    """The keys must fit one variant: all of its `required` keys, nothing outside `required` + `optional`."""
    keys = {str(k) for k in value}
    reasons = []
    for variant in variants:
        required = set(variant["required"])
        allowed = required | set(variant["optional"])
        if required <= keys <= allowed:
            return []
        why = []
        if required - keys:
            why.append("needs " + ", ".join(sorted(required - keys)))
        if keys - allowed:
            why.append("does not take " + ", ".join(sorted(keys - allowed)))
        reasons.append(f"{variant['name']} {' and '.join(why)}")
    return [f"{path}: the options {', '.join(sorted(keys))} fit none of its variants ({'; '.join(reasons)})"]


def _matches(
    conditions: Sequence[Mapping[str, str]], value: Mapping[Any, Any], options: Mapping[str, Node]
) -> bool | None:
    """Whether any `{field, equals}` holds for the siblings (a missing one counts at its default);
    None when it cannot be known (the field is unset without a default, or comes from the environment)."""
    unknown = False
    for condition in conditions:
        here = _sibling(value, options, condition["field"])
        if here is UNKNOWN:
            unknown = True
        elif here == condition["equals"]:
            return True
    return None if unknown else False


def _sibling(value: Mapping[Any, Any], options: Mapping[str, Node], field: str) -> Any:
    if field in value:
        here = value[field]
        return UNKNOWN if isinstance(here, str) and interpolation(here) is not None else here
    node = options.get(field, {})
    if "default" in node:
        return node["default"]
    defaults = [d["default"] for d in node.get("types", {}).values() if "default" in d]
    return defaults[0] if len(defaults) == 1 else UNKNOWN


def _fits(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "uint":
        return _is_int(value) and value >= 0
    if kind == "int":
        return _is_int(value)
    if kind == "float":
        return _is_int(value) or isinstance(value, float)
    if kind in ("string", "ascii_char", "timestamp"):
        return isinstance(value, str)
    if kind == "condition":
        return isinstance(value, str | Mapping)
    if kind == "object":
        return isinstance(value, Mapping)
    if kind == "array":
        return isinstance(value, list)
    return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expected(types: Mapping[str, Any]) -> str:
    return " or ".join(types) or "nothing"


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _suggestion(key: str, options: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""

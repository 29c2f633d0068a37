"""Reading config sources and merging them by Consul's rules; the load entry points.

Owns reading `-config-file` / `-config-dir` sources (JSON and HCL1) in command-line order and
inline `-hcl` fragments; type checking every key of every source against the schema (unknown keys
are errors, IGNORED keys warnings); folding legacy keys into their new homes; Consul's merge rules
(agent/config/merge.go): scalars later-wins, lists append, maps replaced whole when non-empty,
nested objects merged field by field; and the entry points `load`, `load_from`, `validate_paths`.

Source order, as Consul's builder: defaults, dev defaults (`-dev`), list-valued flags (so flag
lists come first and files append to them), config files and directories in the order given,
scalar and map flags (so flags win over files), then `-hcl` fragments (which win over flags).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from proconsul import structs
from proconsul.config import honesty
from proconsul.config.agent_flags import agent_flagset, flag_sources
from proconsul.config.build import build
from proconsul.config.model import RuntimeConfig
from proconsul.config.result import Collector, ConfigError, LoadResult, Source
from proconsul.config.schema import (
    BOOL,
    DEV,
    DUR,
    DURMAP,
    FLOAT,
    IGNORED,
    INT,
    LEGACY_KEYS,
    LEGACY_TOKEN_KEYS,
    LIST_KINDS,
    MAP_KINDS,
    RAWLIST,
    SCHEMA,
    STR,
    STRLIST,
    STRMAP,
    UINT,
)
from proconsul.durations import parse_duration
from proconsul.flags import FlagError, ParsedFlags

__all__ = ["load", "load_from", "validate_paths", "validate_paths_with_warnings"]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Per-source type checking


def _show(value: Any) -> str:
    """Render a bad value the way it appeared in JSON, for error messages."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _check_leaf(kind: str, value: Any) -> tuple[Any, str | None]:
    """Convert one value of `kind`; returns (value, None) or (None, error message)."""
    if kind == STR:
        if isinstance(value, str):
            return value, None
        return None, f"expected a string, got {_show(value)}"
    if kind == BOOL:
        # Consul's decoder is not weakly typed: "true" (a string) is an error, as there.
        if isinstance(value, bool):
            return value, None
        return None, f"expected a boolean, got {_show(value)}"
    if kind in (INT, UINT):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if kind == UINT and value < 0:
                return None, f"expected a non-negative integer, got {value}"
            return value, None
        return None, f"expected an integer, got {_show(value)}"
    if kind == FLOAT:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        return None, f"expected a number, got {_show(value)}"
    if kind == DUR:
        if not isinstance(value, str):
            return None, f'expected a duration string such as "10s", got {_show(value)}'
        try:
            return parse_duration(value), None
        except ValueError as exc:
            return None, f"expected a duration: {exc}"
    if kind == STRLIST:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value), None
        return None, f"expected a list of strings, got {_show(value)}"
    if kind in (STRMAP, DURMAP):
        if not isinstance(value, dict):
            return None, f"expected an object of strings, got {_show(value)}"
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(v, str):
                return None, f"{k}: expected a string, got {_show(v)}"
            if kind == DURMAP:
                try:
                    out[k] = parse_duration(v)
                except ValueError as exc:
                    return None, f"{k}: expected a duration: {exc}"
            else:
                out[k] = v
        return out, None
    if kind == RAWLIST:
        items = [value] if isinstance(value, dict) else value
        if isinstance(items, list) and all(isinstance(v, dict) for v in items):
            return list(items), None
        return None, f"expected a list of objects, got {_show(value)}"
    raise AssertionError(kind)


def _lookup(schema: dict[str, Any], key: str) -> str | None:
    """Find the schema key for `key`: exact, else case-insensitive (mapstructure matches so)."""
    if key in schema:
        return key
    folded = key.lower()
    for candidate in schema:
        if candidate.lower() == folded:
            return candidate
    return None


def _check_object(
    raw: dict[str, Any], schema: dict[str, Any], prefix: str, src: Source, out: Collector
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for raw_key, value in raw.items():
        key = _lookup(schema, raw_key) if isinstance(raw_key, str) else None
        path = prefix + (key or str(raw_key))
        if key is None:
            out.errors.append(f"{src.where(path)}: invalid config key {path}")
            continue
        kind = schema[key]
        if kind == IGNORED:
            refusal = honesty.refuse_ignored(path, value)
            if refusal is not None:
                out.errors.append(f"{src.where(path)}: {refusal}")
            else:
                out.warnings.append(f"{src.name}: config key {path} is not supported by proconsul; ignored")
            continue
        # Consul's HookWeakDecodeFromSlice: a one-element list stands for its element (HCL1
        # blocks decode as lists).
        if isinstance(value, list) and len(value) == 1 and (isinstance(kind, dict) or kind not in LIST_KINDS):
            value = value[0]
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                out.errors.append(f"{src.where(path)}: expected an object, got {_show(value)}")
                continue
            result[key] = _check_object(value, kind, path + ".", src, out)
            continue
        converted, problem = _check_leaf(kind, value)
        if problem is not None:
            out.errors.append(f"{src.where(path)}: {problem}")
            continue
        result[key] = converted
    return result


def _normalize_legacy(src: Source, out: Collector) -> dict[str, Any]:
    """Fold Consul's singular/legacy keys into their current places; returns a new dict."""
    data = dict(src.data)
    # service/check (singular) join the lists after them, as Consul appends c2.Service to
    # c2.Services. In HCL1 a repeated `service {}` block arrives as a list.
    for single, plural in (("service", "services"), ("check", "checks")):
        if single in data:
            value = data.pop(single)
            items = value if isinstance(value, list) else [value]
            existing = data.get(plural, [])
            if isinstance(existing, dict):
                existing = [existing]
            if isinstance(existing, list):
                data[plural] = existing + items
            else:
                out.errors.append(f"{src.where(plural)}: expected a list of objects, got {_show(existing)}")
                data.pop(plural)
    if isinstance(data.get("watches"), dict):
        data["watches"] = [data["watches"]]
    for old, new_path in LEGACY_KEYS.items():
        if old not in data:
            continue
        value = data.pop(old)
        new_key = ".".join(new_path)
        out.warnings.append(f"{src.name}: config key {old} is deprecated; use {new_key}")
        node = data
        for part in new_path[:-1]:
            child = node.get(part)
            if isinstance(child, list) and len(child) == 1:
                child = child[0]
            if not isinstance(child, dict):
                child = {}
            child = dict(child)
            node[part] = child
            node = child
        node.setdefault(new_path[-1], value)  # the new key wins when both are given, as Consul
        if old in src.flag_for:
            src.flag_for[new_key] = src.flag_for[old]
        else:
            src.renamed[new_key] = old  # problems with the value name the key as written
        if old == "verify_incoming":
            # Consul keeps the legacy key off the gRPC port (which could not verify clients
            # before tls.grpc existed) unless tls.grpc.verify_incoming says otherwise.
            tls = dict(data["tls"])
            grpc = tls.get("grpc")
            grpc = dict(grpc) if isinstance(grpc, dict) else {}
            grpc.setdefault("verify_incoming", False)
            tls["grpc"] = grpc
            data["tls"] = tls
    acl = data.get("acl")
    if isinstance(acl, dict) and isinstance(acl.get("tokens"), dict):
        tokens = dict(acl["tokens"])
        for old, new in LEGACY_TOKEN_KEYS.items():
            if old in tokens:
                out.warnings.append(
                    f"{src.name}: config key acl.tokens.{old} is deprecated; use acl.tokens.{new}"
                )
                tokens.setdefault(new, tokens.pop(old))
                tokens.pop(old, None)
        data["acl"] = {**acl, "tokens": tokens}
    return data


def _validate_definitions(layer: dict[str, Any], src: Source, out: Collector) -> None:
    """Check service and check definitions with the same decoder the HTTP API uses."""
    if not layer.get("services") and not layer.get("checks"):
        return
    for key, decode in (("services", structs.decode_service), ("checks", structs.decode_check)):
        for i, raw in enumerate(layer.get(key, [])):
            try:
                decode(raw)
            except structs.DecodeError as exc:
                for problem in exc.errors:
                    out.errors.append(f"{src.name}: {key}[{i}].{problem}")


# ---------------------------------------------------------------------------------------------
# Merging


def _merge(
    base: dict[str, Any],
    layer: dict[str, Any],
    schema: dict[str, Any],
    src: Source,
    out: Collector,
    prefix: str = "",
) -> None:
    """Merge `layer` into `base` in place by Consul's rules, recording where each value came from."""
    for key, value in layer.items():
        kind = schema[key]
        path = prefix + key
        if isinstance(kind, dict):
            _merge(base.setdefault(key, {}), value, kind, src, out, path + ".")
            continue
        if kind in LIST_KINDS:
            base[key] = base.get(key, []) + value
            if value:
                out.origin[path] = src.where(path)
        elif kind in MAP_KINDS:
            if value:  # a later map replaces an earlier one only when it is non-empty
                base[key] = value
                out.origin[path] = src.where(path)
        else:
            base[key] = value
            out.origin[path] = src.where(path)


# ---------------------------------------------------------------------------------------------
# Reading sources


def _parse_text(text: str, fmt: str, name: str, out: Collector) -> dict[str, Any] | None:
    try:
        if fmt == "json":
            data = json.loads(text)
        else:
            import hcl  # pyhcl: HCL1, as Consul's hashicorp/hcl v1

            data = hcl.loads(text)
    except Exception as exc:  # noqa: BLE001 - pyhcl raises assorted exception types
        out.errors.append(f"{name}: failed to parse {fmt.upper()}: {exc}")
        return None
    if not isinstance(data, dict):
        out.errors.append(f"{name}: expected an object at the top level")
        return None
    return data


def _format_of(path: str) -> str | None:
    if path.endswith(".json"):
        return "json"
    if path.endswith(".hcl"):
        return "hcl"
    return None


def _read_path(path: str, config_format: str | None, out: Collector) -> list[Source]:
    """Sources from one -config-file or -config-dir argument (a file or a directory)."""
    try:
        is_dir = os.path.isdir(path)
        if not is_dir:
            os.stat(path)
    except OSError as exc:
        out.errors.append(f"{path}: cannot read config: {exc.strerror or exc}")
        return []
    if is_dir:
        try:
            names = sorted(os.listdir(path))  # lexical order by name, as Consul
        except OSError as exc:
            out.errors.append(f"{path}: cannot read config directory: {exc.strerror or exc}")
            return []
        files = []
        for name in names:
            full = os.path.join(path, name)
            if os.path.isdir(full):  # follows symlinks; no recursion into sub-directories
                continue
            files.append(full)
    else:
        files = [path]
    sources = []
    for file in files:
        fmt = config_format or _format_of(file)
        if fmt is None:
            out.warnings.append(
                f"skipping file {file}, extension must be .hcl or .json, or config format must be set"
            )
            continue
        try:
            with open(file, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            out.errors.append(f"{file}: cannot read config: {exc}")
            continue
        if text == "":  # Consul skips empty sources
            sources.append(Source(file, {}))
            continue
        data = _parse_text(text, fmt, file, out)
        if data is not None:
            sources.append(Source(file, data))
    return sources


# ---------------------------------------------------------------------------------------------
# Entry points


def _assemble(
    file_args: list[str],
    config_format: str | None,
    dev: bool,
    flag_lists: Source | None,
    flag_values: Source | None,
    hcl_fragments: list[str],
    check_paths: bool = True,
) -> tuple[RuntimeConfig | None, Collector]:
    out = Collector()
    if config_format not in (None, "", "hcl", "json"):
        out.errors.append("command line: -config-format: -config-format must be either 'hcl' or 'json'")
        return None, out
    sources: list[Source] = []
    if dev:
        sources.append(Source("dev", dict(DEV)))
    if flag_lists is not None:
        sources.append(flag_lists)
    files: list[Source] = []
    for path in file_args:
        files.extend(_read_path(path, config_format or None, out))
    sources.extend(files)
    if flag_values is not None:
        sources.append(flag_values)
    for i, fragment in enumerate(hcl_fragments):
        name = f"command line: -hcl[{i}]"
        data = _parse_text(fragment, "hcl", name, out)
        if data is not None:
            sources.append(Source(name, data))
    merged: dict[str, Any] = {}
    for src in sources:
        data = _normalize_legacy(src, out)
        layer = _check_object(data, SCHEMA, "", src, out)
        _validate_definitions(layer, src, out)
        _merge(merged, layer, SCHEMA, src, out)
    honesty.check(merged, out)
    config = build(merged, dev, [s.name for s in files], out, check_paths)
    return config, out


def load_from(flags: ParsedFlags) -> LoadResult:
    """Build the configuration from already-parsed agent flags (reload re-runs this)."""
    file_args = [value for name, value in flags.given if name in ("config-file", "config-dir")]
    lists, values = flag_sources(flags)
    config, out = _assemble(
        file_args,
        flags.values.get("config-format"),
        bool(flags.values.get("dev")),
        lists,
        values,
        list(flags.values.get("hcl") or []),
    )
    if out.errors or config is None:
        raise ConfigError(out.errors)
    for warning in out.warnings:
        log.debug("config warning: %s", warning)
    return LoadResult(config=config, warnings=out.warnings)


def load(argv: list[str]) -> LoadResult:
    """Parse `proconsul agent` arguments and build the configuration.

    Raises FlagError/HelpRequested for command-line syntax, ConfigError with every problem.
    """
    flags = agent_flagset().parse(argv)
    if flags.args:
        raise FlagError(f"unexpected argument(s): {' '.join(flags.args)}")
    return load_from(flags)


def validate_paths(paths: Iterable[str], config_format: str | None = None) -> list[str]:
    """Every error in the given config files/directories, as `proconsul validate` reports them.

    Like `consul validate`, the files must form a complete agent configuration: data_dir is
    required (Consul's validate runs the agent's full validation, data_dir check included), but
    host-specific checks on the data directory itself are skipped.
    """
    _, out = _assemble(list(paths), config_format, False, None, None, [], check_paths=False)
    return out.errors


def validate_paths_with_warnings(
    paths: Iterable[str], config_format: str | None = None
) -> tuple[list[str], list[str]]:
    """Like validate_paths, also returning the warnings (for `proconsul validate` output)."""
    _, out = _assemble(list(paths), config_format, False, None, None, [], check_paths=False)
    return out.errors, out.warnings

"""
The README's configuration reference and the shipped schema agree: every
key the schema accepts is documented, and nothing documented is unknown.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, Set

import yaml

from spectrum.config import load

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "spectrum" / "schema.json").read_text())


def _resolve(node: Dict[str, Any]) -> Dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = {**SCHEMA["$defs"][name], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def schema_keys(node: Dict[str, Any], prefix: str = "", depth: int = 0) -> Iterator[str]:
    """
    Every key path the schema accepts, as C{apps[].origin_pool.origins[].port}.
    """
    if depth > 12:
        return
    node = _resolve(node)
    for branch in node.get("oneOf", []) + node.get("anyOf", []) + node.get("allOf", []):
        yield from schema_keys(branch, prefix, depth + 1)
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        yield from schema_keys(child, path, depth + 1)
    items = node.get("items")
    if isinstance(items, dict):
        yield from schema_keys(items, prefix + "[]", depth + 1)


def documented_keys() -> Set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.M))


def test_every_schema_key_is_documented() -> None:
    keys = set(schema_keys(SCHEMA))
    assert len(keys) > 20
    missing = sorted(keys - documented_keys())
    assert not missing, f"README's configuration reference lacks: {missing}"


def test_nothing_documented_that_the_schema_refuses() -> None:
    unknown = sorted(documented_keys() - set(schema_keys(SCHEMA)))
    assert not unknown, f"README documents keys the schema does not accept: {unknown}"


def test_examples_load(tmp_path: Path) -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "examples").glob("*.json"))
    assert examples
    for example in examples:
        config = load(str(example))
        assert config.apps, example


def test_readme_yaml_blocks_load(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert blocks
    for i, block in enumerate(blocks):
        if "apps:" not in block:
            continue
        path = tmp_path / f"block{i}.yaml"
        path.write_text(block)
        assert yaml.safe_load(block)
        assert load(str(path)).apps

"""The JSON Schema of a spec's blocks (`lmspec schema`), for editors and tools.

The schema describes one JSON document, the blocks of a spec by kind and name:

    {"model": {"gpt": {...}}, "train": {"pretrain": {...}}}

where each block is what `block.model_dump(mode="json", by_alias=True)` gives for a block of
`ValidatedSpec.blocks`. Every block kind's schema, and every schema the kinds share (heads,
optimizers, variants), sits once under the top-level `$defs`, so that each `$ref` resolves in
a standard validator (Draft 2020-12). pydantic generates all kinds in one pass
(`models_json_schema`), which names each definition once and qualifies a name that two
different classes share (`a__Head`, `b__Head`) rather than letting one overwrite the other.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from lmspec.compiler import schema as S

__all__ = ["json_schema", "BLOCK_NAME_PATTERN"]

BLOCK_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"  # NAME in grammar/lmspec.lark


def json_schema(kinds: Mapping[str, type[BaseModel]] = S.BLOCK_KINDS) -> dict:
    """The JSON Schema of every block kind in `kinds` (by default the language's), as one document."""
    refs, shared = models_json_schema([(model, "validation") for model in kinds.values()], by_alias=True,
                                      ref_template="#/$defs/{model}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "lmspec",
        "description": "The blocks of an .lmspec file, by kind, then by name.",
        "type": "object",
        "properties": {
            kind: {
                "description": f"the {kind} blocks of the spec, by name",
                "type": "object",
                "propertyNames": {"pattern": BLOCK_NAME_PATTERN},
                "additionalProperties": refs[(model, "validation")],
            }
            for kind, model in kinds.items()
        },
        "additionalProperties": False,  # an unknown block kind is LMS040
        "$defs": shared.get("$defs", {}),
    }

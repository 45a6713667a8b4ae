"""A parsed ``--where`` (`filters.Where`) as Qdrant's filter models (imported only with the qdrant extra)."""

from __future__ import annotations

from typing import Any

from counterclip.errors import InputError
from counterclip.index_builder.stores.filters import Bool, Cmp, In, Node

_RANGE = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}


def to_qdrant(node: Node) -> Any:
    """``qdrant_client.models.Filter`` meaning the same as `filters.Where.matches`."""
    from qdrant_client import models

    if isinstance(node, Bool):
        parts = [_condition(item) for item in node.items]
        if node.op == "not":
            return models.Filter(must_not=parts)
        return models.Filter(must=parts) if node.op == "and" else models.Filter(should=parts)
    return models.Filter(must=[_condition(node)])


def _condition(node: Node) -> Any:
    from qdrant_client import models

    if isinstance(node, Bool):
        return to_qdrant(node)
    if isinstance(node, In):
        if any(isinstance(v, float) for v in node.values):
            return models.Filter(should=[_equal(node.field, v) for v in node.values])
        return models.FieldCondition(key=node.field, match=models.MatchAny(any=list(node.values)))
    assert isinstance(node, Cmp)
    if node.op == "=":
        return _equal(node.field, node.value)
    if node.op == "!=":
        return models.Filter(must_not=[_equal(node.field, node.value)])
    if isinstance(node.value, (str, bool)):
        raise InputError(f"--where: {node.field} {node.op} {node.value!r}: Qdrant orders numbers only")
    return models.FieldCondition(key=node.field, range=models.Range(**{_RANGE[node.op]: node.value}))


def _equal(field: str, value: Any) -> Any:
    from qdrant_client import models

    if isinstance(value, float):  # MatchValue takes texts, integers and booleans
        return models.FieldCondition(key=field, range=models.Range(gte=value, lte=value))
    return models.FieldCondition(key=field, match=models.MatchValue(value=value))

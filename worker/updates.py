"""Apply what a webhook may change to the order.

Only the writable properties below change. A response names them exactly in
PascalCase or camelCase; PascalCase wins when both appear. Changes are written
back under the key the order already uses. Lists merge unless the connector or
step turns ``KeepExistingListItems`` (Tags, Errors, Assets) or
``KeepExistingCustomProperties`` (Properties) off, in which case they replace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.casing import camel_case, find_key, get_any_case

WRITABLE = (
    "Status",
    "OrderType",
    "Tags",
    "Name",
    "Errors",
    "FollowUpDate",
    "Assets",
    "Origin",
    "Properties",
)
SCALARS = frozenset({"Status", "OrderType", "Name", "Origin", "FollowUpDate"})
_WRITABLE_BY_LOWER = {name.lower(): name for name in WRITABLE}

STEP_ERROR_KEY = "WebhookWorkflowStep"
_MISSING = object()


class InvalidUpdate(ValueError):
    """A writable property in the response has the wrong type."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"field {field_name}: {problem}")
        self.field_name = field_name


@dataclass
class UpdateOutcome:
    order: dict[str, Any]
    changed: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def uses_camel_case(order: Mapping[str, Any]) -> bool:
    """Return True when the order's keys are camelCase (``id`` rather than ``Id``)."""
    id_key = find_key(order, "Id")
    if id_key is not None:
        return id_key[:1].islower()
    first = next((key for key in order if isinstance(key, str) and key), "")
    return first[:1].islower()


def order_key(order: Mapping[str, Any], name: str) -> str:
    """Return the key under which ``name`` is stored, or would be, in this order."""
    existing = find_key(order, name)
    if existing is not None:
        return existing
    return camel_case(name) if uses_camel_case(order) else name


def _pick_writable(body: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Return the writable values the response sets, and notes on what it ignored."""
    values: dict[str, Any] = {}
    notes: list[str] = []
    for name in WRITABLE:
        camel = camel_case(name)
        if name in body and body[name] is not None:
            values[name] = body[name]
            if camel in body and body[camel] is not None and body[camel] != body[name]:
                notes.append(f'"{camel}" ignored because "{name}" is also given')
        elif camel in body and body[camel] is not None:
            values[name] = body[camel]
    return values, notes


def _ignored_notes(body: Mapping[str, Any], order: Mapping[str, Any]) -> list[str]:
    notes: list[str] = []
    unknown: list[str] = []
    for key, value in body.items():
        name = _WRITABLE_BY_LOWER.get(key.lower())
        if name is not None:
            if key not in (name, camel_case(name)):
                notes.append(f'"{key}" ignored: did you mean "{name}"?')
            continue
        # An echoed property that equals the order's value is not worth a note.
        if get_any_case(order, key, default=_MISSING) != value:
            unknown.append(f'"{key}"')
    if unknown:
        notes.append(
            "ignored properties the webhook may not change: " + ", ".join(unknown)
        )
    return notes


def _list_of(value: Any, name: str, item_type: type, item_word: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidUpdate(name, f"must be a list of {item_word}, not {_kind(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, item_type) or isinstance(item, bool):
            raise InvalidUpdate(
                f"{name}[{index}]", f"must be {item_word[:-1]}, not {_kind(item)}"
            )
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _identity(item: Mapping[str, Any], id_field: str, where: str) -> Any:
    identity = get_any_case(item, id_field)
    if identity is None or isinstance(identity, dict | list | bool):
        raise InvalidUpdate(where, f"an item without {id_field}")
    return identity


def _merge_by(
    existing: list[Any], incoming: list[dict[str, Any]], id_field: str, name: str
) -> list[Any]:
    merged = list(existing)
    for index, item in enumerate(incoming):
        identity = _identity(item, id_field, f"{name}[{index}]")
        for position, current in enumerate(merged):
            if (
                isinstance(current, Mapping)
                and get_any_case(current, id_field) == identity
            ):
                merged[position] = item
                break
        else:
            merged.append(item)
    return merged


def _new_value(
    name: str,
    value: Any,
    current: Any,
    keep_list_items: bool,
    keep_custom_properties: bool,
) -> Any:
    if name in SCALARS:
        if not isinstance(value, str):
            raise InvalidUpdate(name, f"must be a string, not {_kind(value)}")
        return value

    existing = current if isinstance(current, list) else []
    if name == "Tags":
        tags = _list_of(value, name, str, "strings")
        if not keep_list_items:
            return list(tags)
        return existing + [tag for tag in dict.fromkeys(tags) if tag not in existing]
    if name == "Errors":
        errors = _list_of(value, name, dict, "objects")
        # An empty Errors list clears the errors, also when lists merge.
        if not keep_list_items or not errors:
            return list(errors)
        return existing + errors
    if name == "Assets":
        assets = _list_of(value, name, dict, "objects")
        for index, asset in enumerate(assets):
            _identity(asset, "AssetId", f"Assets[{index}]")
        return (
            _merge_by(existing, assets, "AssetId", name) if keep_list_items else assets
        )
    # Properties
    properties = _list_of(value, name, dict, "objects")
    for index, prop in enumerate(properties):
        key = get_any_case(prop, "Key")
        if not isinstance(key, str) or not key:
            raise InvalidUpdate(f"Properties[{index}]", "an item without a string Key")
    if keep_custom_properties:
        return _merge_by(existing, properties, "Key", name)
    return properties


def apply_response(
    order: Mapping[str, Any],
    body: Any,
    *,
    keep_list_items: bool = True,
    keep_custom_properties: bool = True,
) -> UpdateOutcome:
    """Return a copy of ``order`` with the response's writable properties applied.

    ``body`` is the parsed JSON response: None (empty body or ``null``) or an
    object. Notes on ignored properties go to ``messages``.

    Raises:
        InvalidUpdate: a writable property has the wrong type; nothing is applied.
    """
    # A shallow copy is enough: every change below replaces a whole top-level
    # value with a new one, and no nested list or object is changed in place.
    updated = dict(order)
    if body is None:
        return UpdateOutcome(updated)
    if not isinstance(body, Mapping):
        raise InvalidUpdate("(body)", f"must be a JSON object, not {_kind(body)}")
    if not body:
        return UpdateOutcome(updated)

    values, notes = _pick_writable(body)
    notes += _ignored_notes(body, order)
    new_values = {
        name: _new_value(
            name,
            value,
            get_any_case(order, name),
            keep_list_items,
            keep_custom_properties,
        )
        for name, value in values.items()
    }

    changed = []
    for name, value in new_values.items():
        key = order_key(updated, name)
        if key in updated and updated[key] == value:
            continue
        updated[key] = value
        changed.append(name)
    return UpdateOutcome(updated, changed, notes)


def changed_properties(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> list[str]:
    """Return the writable properties whose values differ between two order versions."""
    return [
        name
        for name in WRITABLE
        if get_any_case(before, name, _MISSING) != get_any_case(after, name, _MISSING)
    ]


def _entry_field(order: Mapping[str, Any], name: str) -> str:
    return camel_case(name) if uses_camel_case(order) else name


def remove_step_errors(order: dict[str, Any], reference_id: str) -> bool:
    """Remove this step's error entries for ``reference_id``; return True if any."""
    key = find_key(order, "Errors")
    if key is None or not isinstance(order[key], list):
        return False
    kept = [
        entry
        for entry in order[key]
        if not (
            isinstance(entry, Mapping)
            and get_any_case(entry, "Key") == STEP_ERROR_KEY
            and get_any_case(entry, "ReferenceId") == reference_id
        )
    ]
    if len(kept) == len(order[key]):
        return False
    order[key] = kept
    return True


def add_step_error(
    order: dict[str, Any], message: str, severity: str, reference_id: str, occurred: str
) -> None:
    """Append an error entry that gives the reason the step failed."""
    entry = {
        _entry_field(order, "Key"): STEP_ERROR_KEY,
        _entry_field(order, "Message"): message,
        _entry_field(order, "Severity"): severity,
        _entry_field(order, "Occurred"): occurred,
        _entry_field(order, "ReferenceId"): reference_id,
    }
    key = order_key(order, "Errors")
    current = order.get(key)
    order[key] = [*current, entry] if isinstance(current, list) else [entry]

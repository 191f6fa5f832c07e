"""apply_response, changed_properties and the step error entries."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from worker.updates import (
    STEP_ERROR_KEY,
    InvalidUpdate,
    UpdateOutcome,
    add_step_error,
    apply_response,
    changed_properties,
    remove_step_errors,
)


def _pascal_order() -> dict[str, Any]:
    return {
        "Id": "o-1",
        "MarketId": "SE",
        "Status": "New",
        "OrderType": "Standard",
        "Name": "Order 1",
        "Origin": "Web",
        "FollowUpDate": "2024-05-01",
        "Tags": ["a", "b"],
        "Errors": [{"Key": "Other", "Message": "old"}],
        "Assets": [{"AssetId": "x1", "Url": "old"}, {"AssetId": "x2", "Url": "keep"}],
        "Properties": [{"Key": "k1", "Value": "1"}, {"Key": "k2", "Value": "2"}],
        "Customer": {"Name": "Ann"},
    }


def _camel_order() -> dict[str, Any]:
    return {
        "id": "o-1",
        "status": "New",
        "tags": ["a"],
        "properties": [{"key": "k1", "value": "1"}],
    }


def _apply(
    body: Any, order: dict[str, Any] | None = None, **flags: bool
) -> UpdateOutcome:
    return apply_response(order or _pascal_order(), body, **flags)


@pytest.mark.parametrize("body", [None, {}], ids=["empty or null", "empty object"])
def test_apply_no_body(body: Any) -> None:
    outcome = _apply(body)
    assert outcome.order == _pascal_order()
    assert outcome.changed == []
    assert outcome.messages == []


def test_apply_copies_order() -> None:
    order = _pascal_order()
    outcome = apply_response(order, {"Status": "Done", "Tags": ["c"]})
    assert order == _pascal_order()
    assert outcome.order is not order


@pytest.mark.parametrize("body", [[], [{"Status": "Done"}], "text", 5, True])
def test_apply_non_object_rejected(body: Any) -> None:
    with pytest.raises(InvalidUpdate):
        _apply(body)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Status", "Shipped"),
        ("OrderType", "Express"),
        ("Name", "Renamed"),
        ("Origin", "Store"),
        ("FollowUpDate", "2024-06-01"),
    ],
)
def test_apply_scalar_replaces(name: str, value: str) -> None:
    outcome = _apply({name: value})
    assert outcome.order[name] == value
    assert outcome.changed == [name]


@pytest.mark.parametrize(
    ("name", "value"),
    [("Status", "New"), ("Name", "Order 1"), ("Origin", "Web")],
)
def test_apply_scalar_same_unchanged(name: str, value: str) -> None:
    assert _apply({name: value}).changed == []


def test_apply_scalar_null_ignored() -> None:
    outcome = _apply({"Status": None})
    assert outcome.order["Status"] == "New"
    assert outcome.changed == []


def test_apply_new_scalar_added() -> None:
    outcome = _apply({"Status": "Done"}, {"Id": "o-1"})
    assert outcome.order == {"Id": "o-1", "Status": "Done"}


@pytest.mark.parametrize(
    ("incoming", "expected"),
    [
        (["c"], ["a", "b", "c"]),
        (["b", "c", "a"], ["a", "b", "c"]),
        (["d", "c", "d"], ["a", "b", "d", "c"]),
        (["A"], ["a", "b", "A"]),
        ([], ["a", "b"]),
    ],
)
def test_apply_tags_union(incoming: list[str], expected: list[str]) -> None:
    assert _apply({"Tags": incoming}).order["Tags"] == expected


def test_apply_tags_subset_unchanged() -> None:
    assert _apply({"Tags": ["b", "a"]}).changed == []


@pytest.mark.parametrize(
    ("incoming", "expected"),
    [(["c", "a"], ["c", "a"]), ([], [])],
)
def test_apply_tags_replace(incoming: list[str], expected: list[str]) -> None:
    outcome = _apply({"Tags": incoming}, keep_list_items=False)
    assert outcome.order["Tags"] == expected


def test_apply_properties_add_replace() -> None:
    body = {"Properties": [{"Key": "k2", "Value": "new"}, {"Key": "k3", "Value": "3"}]}
    assert _apply(body).order["Properties"] == [
        {"Key": "k1", "Value": "1"},
        {"Key": "k2", "Value": "new"},
        {"Key": "k3", "Value": "3"},
    ]


def test_apply_properties_key_case_sensitive() -> None:
    body = {"Properties": [{"Key": "K1", "Value": "x"}]}
    assert len(_apply(body).order["Properties"]) == 3


def test_apply_properties_camel_item() -> None:
    body = {"Properties": [{"key": "k1", "value": "x"}]}
    assert _apply(body).order["Properties"][0] == {"key": "k1", "value": "x"}


def test_apply_properties_same_unchanged() -> None:
    body = {"Properties": [{"Key": "k1", "Value": "1"}]}
    assert _apply(body).changed == []


@pytest.mark.parametrize(
    ("incoming", "expected"),
    [
        ([{"Key": "k9", "Value": "9"}], [{"Key": "k9", "Value": "9"}]),
        ([], []),
    ],
)
def test_apply_properties_replace(
    incoming: list[dict[str, str]], expected: list[dict[str, str]]
) -> None:
    outcome = _apply({"Properties": incoming}, keep_custom_properties=False)
    assert outcome.order["Properties"] == expected


def test_apply_properties_ignore_list_flag() -> None:
    body = {"Properties": [{"Key": "k9", "Value": "9"}]}
    outcome = _apply(body, keep_list_items=False)
    assert len(outcome.order["Properties"]) == 3


def test_apply_errors_added() -> None:
    body = {"Errors": [{"Key": "Erp", "Message": "late"}]}
    assert _apply(body).order["Errors"] == [
        {"Key": "Other", "Message": "old"},
        {"Key": "Erp", "Message": "late"},
    ]


@pytest.mark.parametrize("keep", [True, False])
def test_apply_errors_empty_clears(keep: bool) -> None:
    outcome = _apply({"Errors": []}, keep_list_items=keep)
    assert outcome.order["Errors"] == []
    assert outcome.changed == ["Errors"]


def test_apply_errors_replace() -> None:
    body = {"Errors": [{"Key": "Erp"}]}
    outcome = _apply(body, keep_list_items=False)
    assert outcome.order["Errors"] == [{"Key": "Erp"}]


def test_apply_assets_add_replace() -> None:
    body = {"Assets": [{"AssetId": "x1", "Url": "new"}, {"AssetId": "x3"}]}
    assert _apply(body).order["Assets"] == [
        {"AssetId": "x1", "Url": "new"},
        {"AssetId": "x2", "Url": "keep"},
        {"AssetId": "x3"},
    ]


def test_apply_assets_numeric_id() -> None:
    order = {"Id": "o-1", "Assets": [{"AssetId": 7, "Url": "old"}]}
    outcome = _apply({"Assets": [{"AssetId": 7, "Url": "new"}]}, order)
    assert outcome.order["Assets"] == [{"AssetId": 7, "Url": "new"}]


@pytest.mark.parametrize(
    ("incoming", "expected"),
    [([{"AssetId": "x9"}], [{"AssetId": "x9"}]), ([], [])],
)
def test_apply_assets_replace(
    incoming: list[dict[str, str]], expected: list[dict[str, str]]
) -> None:
    outcome = _apply({"Assets": incoming}, keep_list_items=False)
    assert outcome.order["Assets"] == expected


def test_apply_assets_same_unchanged() -> None:
    assert _apply({"Assets": [{"AssetId": "x2", "Url": "keep"}]}).changed == []


def test_apply_camel_onto_pascal() -> None:
    outcome = _apply({"status": "Done", "tags": ["z"]})
    assert outcome.order["Status"] == "Done"
    assert outcome.order["Tags"] == ["a", "b", "z"]
    assert "status" not in outcome.order
    assert "tags" not in outcome.order
    assert outcome.changed == ["Status", "Tags"]


def test_apply_pascal_onto_camel() -> None:
    body = {"Status": "Done", "Properties": [{"Key": "k1", "Value": "2"}]}
    outcome = _apply(body, _camel_order())
    assert outcome.order["status"] == "Done"
    assert outcome.order["properties"] == [{"Key": "k1", "Value": "2"}]
    assert "Status" not in outcome.order
    assert "Properties" not in outcome.order


def test_apply_new_key_camel_order() -> None:
    outcome = _apply({"OrderType": "Express"}, _camel_order())
    assert outcome.order["orderType"] == "Express"
    assert "OrderType" not in outcome.order


def test_apply_new_key_pascal_order() -> None:
    outcome = _apply({"orderType": "Express"}, {"Id": "o-1"})
    assert outcome.order["OrderType"] == "Express"


def test_apply_changed_names_pascal() -> None:
    assert _apply({"status": "Done"}, _camel_order()).changed == ["Status"]


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("STATUS", "Status"),
        ("ordertype", "OrderType"),
        ("TAGS", "Tags"),
        ("followupdate", "FollowUpDate"),
    ],
)
def test_apply_wrong_case_ignored(key: str, name: str) -> None:
    outcome = _apply({key: "X" if name != "Tags" else ["x"]})
    assert outcome.order == _pascal_order()
    assert outcome.changed == []
    assert f'"{key}" ignored: did you mean "{name}"?' in outcome.messages


def test_apply_unknown_differs_named() -> None:
    outcome = _apply({"MarketId": "NO", "Price": 5})
    assert outcome.order["MarketId"] == "SE"
    assert "Price" not in outcome.order
    assert outcome.messages == [
        'ignored properties the webhook may not change: "MarketId", "Price"'
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"Id": "o-1", "MarketId": "SE"},
        {"id": "o-1", "customer": {"Name": "Ann"}},
    ],
)
def test_apply_unknown_echo_silent(body: dict[str, Any]) -> None:
    outcome = _apply(body)
    assert outcome.messages == []
    assert outcome.changed == []


def test_apply_pascal_wins() -> None:
    outcome = _apply({"status": "Lost", "Status": "Won"})
    assert outcome.order["Status"] == "Won"
    assert '"status" ignored because "Status" is also given' in outcome.messages


def test_apply_pascal_wins_equal_silent() -> None:
    outcome = _apply({"status": "Won", "Status": "Won"})
    assert outcome.messages == []


def test_apply_pascal_null_uses_camel() -> None:
    assert _apply({"Status": None, "status": "Won"}).order["Status"] == "Won"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"Status": 5}, "Status"),
        ({"Status": True}, "Status"),
        ({"Name": ["x"]}, "Name"),
        ({"FollowUpDate": {"Date": "x"}}, "FollowUpDate"),
        ({"Tags": "x"}, "Tags"),
        ({"Tags": [1]}, "Tags[0]"),
        ({"Tags": ["a", None]}, "Tags[1]"),
        ({"Errors": "boom"}, "Errors"),
        ({"Errors": ["boom"]}, "Errors[0]"),
        ({"Assets": [{"Url": "u"}]}, "Assets[0]"),
        ({"Assets": [{"AssetId": "a"}, {"AssetId": None}]}, "Assets[1]"),
        ({"Assets": [{"AssetId": True}]}, "Assets[0]"),
        ({"Assets": {"AssetId": "a"}}, "Assets"),
        ({"Properties": [{"Value": "v"}]}, "Properties[0]"),
        ({"Properties": [{"Key": ""}]}, "Properties[0]"),
        ({"Properties": [{"Key": 5}]}, "Properties[0]"),
        ({"Properties": "k=v"}, "Properties"),
        ({"tags": "x"}, "Tags"),
    ],
)
def test_apply_wrong_type(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidUpdate) as caught:
        _apply(body)
    assert caught.value.field_name == field
    assert str(caught.value).startswith(f"field {field}:")


def test_apply_wrong_type_applies_nothing() -> None:
    order = _pascal_order()
    with pytest.raises(InvalidUpdate):
        apply_response(order, {"Name": "New", "Status": 5})
    assert order == _pascal_order()


def test_apply_changed_lists_only_changes() -> None:
    body = {
        "Status": "New",
        "Name": "Renamed",
        "Tags": ["a"],
        "Assets": [{"AssetId": "x1", "Url": "old"}],
        "Properties": [{"Key": "k2", "Value": "changed"}],
    }
    assert _apply(body).changed == ["Name", "Properties"]


def test_changed_properties_compare() -> None:
    before = _pascal_order()
    after = copy.deepcopy(before)
    after["Status"] = "Done"
    after["Customer"] = {"Name": "Bob"}
    after["Tags"].append("z")
    assert changed_properties(before, after) == ["Status", "Tags"]


def test_changed_properties_any_case() -> None:
    assert changed_properties({"Status": "A"}, {"status": "A"}) == []


def test_changed_properties_added() -> None:
    assert changed_properties({}, {"Origin": "Web"}) == ["Origin"]


def test_step_error_added_pascal() -> None:
    order = _pascal_order()
    add_step_error(order, "webhook failed", "Error", "ref-1", "2024-05-01T00:00:00Z")
    assert order["Errors"][-1] == {
        "Key": STEP_ERROR_KEY,
        "Message": "webhook failed",
        "Severity": "Error",
        "Occurred": "2024-05-01T00:00:00Z",
        "ReferenceId": "ref-1",
    }
    assert order["Errors"][0] == {"Key": "Other", "Message": "old"}


def test_step_error_added_camel() -> None:
    order = _camel_order()
    add_step_error(order, "failed", "Warning", "ref-1", "t")
    assert order["errors"] == [
        {
            "key": "WebhookWorkflowStep",
            "message": "failed",
            "severity": "Warning",
            "occurred": "t",
            "referenceId": "ref-1",
        }
    ]


def test_step_error_key_value() -> None:
    assert STEP_ERROR_KEY == "WebhookWorkflowStep"


def _errors_order() -> dict[str, Any]:
    return {
        "Id": "o-1",
        "Status": "New",
        "Errors": [
            {"Key": "WebhookWorkflowStep", "ReferenceId": "ref-1", "Message": "a"},
            {"Key": "WebhookWorkflowStep", "ReferenceId": "ref-2", "Message": "b"},
            {"Key": "Other", "ReferenceId": "ref-1", "Message": "c"},
            {"key": "WebhookWorkflowStep", "referenceId": "ref-1", "message": "d"},
            "not an object",
        ],
    }


def test_remove_step_errors() -> None:
    order = _errors_order()
    assert remove_step_errors(order, "ref-1") is True
    assert order["Errors"] == [
        {"Key": "WebhookWorkflowStep", "ReferenceId": "ref-2", "Message": "b"},
        {"Key": "Other", "ReferenceId": "ref-1", "Message": "c"},
        "not an object",
    ]


def test_remove_step_errors_rest_intact() -> None:
    order = _errors_order()
    remove_step_errors(order, "ref-1")
    assert order["Status"] == "New"
    assert set(order) == {"Id", "Status", "Errors"}


@pytest.mark.parametrize(
    "order",
    [
        {"Id": "o-1"},
        {"Id": "o-1", "Errors": None},
        {"Id": "o-1", "Errors": [{"Key": "Other", "ReferenceId": "ref-9"}]},
        {"Id": "o-1", "Errors": [{"Key": "WebhookWorkflowStep", "ReferenceId": "x"}]},
    ],
)
def test_remove_step_errors_none(order: dict[str, Any]) -> None:
    before = copy.deepcopy(order)
    assert remove_step_errors(order, "ref-9") is False
    assert order == before


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"[]", "an array"),
        (b'[{"Status": "x"}]', "an array"),
        (b'"x"', "a single value"),
    ],
)
def test_response_body_non_object(content: bytes, kind: str) -> None:
    # The webhook client rejects these before apply_response receives them.
    from worker.errors import InvalidResponseBody
    from worker.webhook import _parse_body

    with pytest.raises(InvalidResponseBody, match=kind):
        _parse_body(content, "https://erp.test/hook", 200)


@pytest.mark.parametrize("content", [b"", b"  \n", b"null"])
def test_response_body_empty(content: bytes) -> None:
    from worker.webhook import _parse_body

    assert _parse_body(content, "https://erp.test/hook", 200) is None


def test_apply_leaves_order_unchanged() -> None:
    order = {
        "Id": 1,
        "Tags": ["a"],
        "Errors": [{"Key": "WebhookWorkflowStep", "ReferenceId": "c1"}],
        "Assets": [{"AssetId": "x", "Name": "old"}],
        "Properties": [{"Key": "k", "Value": "1"}],
    }
    before = copy.deepcopy(order)
    body = {
        "Tags": ["b"],
        "Errors": [{"Key": "Other"}],
        "Assets": [{"AssetId": "x", "Name": "new"}],
        "Properties": [{"Key": "k", "Value": "2"}],
    }
    outcome = apply_response(order, body)
    remove_step_errors(outcome.order, "c1")
    assert order == before
    assert outcome.order["Tags"] == ["a", "b"]

"""Property tests: hostile jobs, tenant files and webhook bodies never crash the worker.

No example opens a connection: the client's policy rejects every private
address, the only hosts generated are loopback literals, and name resolution
is limited to IP literals and localhost for the duration of each test.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from worker import jsontext
from worker.errors import ConfigError, InvalidResponseBody
from worker.netguard import AddressPolicy
from worker.step import DeadLettered, Finished, Reschedule, StepRunner
from worker.tenants import TenantStore, parse_tenant_file
from worker.updates import InvalidUpdate, UpdateOutcome, apply_response
from worker.webhook import WebhookClient, _parse_body

FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HOSTS = [
    "http://127.0.0.1:9/hook",
    "http://[::1]:9/hook",
    "https://127.0.0.1:9/",
    "http://[::ffff:127.0.0.1]:9/x?token=abc",
    "ftp://127.0.0.1/",
    "http://user:pw@127.0.0.1/",
    "http://127.0.0.1:0/",
    "http://[::1/",
    "",
]
URL = "http://127.0.0.1:9/hook"

# --- strategies ------------------------------------------------------------

NUMBER_TEXTS = ["1e999", "-1e999", "-0", "99.90", "1E+2"]
# Longer than the 4300 digits that int() converts; jsontext keeps its text.
HUGE_INTEGER = "9" * 4500


def json_values_with(number_texts: list[str]) -> st.SearchStrategy[Any]:
    """Return JSON values as the worker's codec reads them, with these numbers."""
    numbers = st.one_of(
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(number_texts).map(jsontext.loads),
    )
    scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30))
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=12), children, max_size=4),
        ),
        max_leaves=15,
    )


json_values = json_values_with([*NUMBER_TEXTS, HUGE_INTEGER])
# Tenant files without the huge integer: test_tenant_parser_limits covers it.
tenant_json_values = json_values_with(NUMBER_TEXTS)
numbers = st.one_of(st.integers(), st.sampled_from(NUMBER_TEXTS).map(jsontext.loads))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30))


def any_case(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name[:1].lower() + name[1:], name.upper()])


step_properties = st.fixed_dictionaries(
    {
        "Key": st.one_of(
            st.sampled_from(
                [
                    "Host",
                    "ErrorStatus",
                    "KeepExistingListItems",
                    "KeepExistingCustomProperties",
                    "Authorization",
                    "X-Api-Key",
                    "Content-Length",
                    "bad header",
                ]
            ),
            st.text(max_size=10),
        ),
        "Value": st.one_of(st.sampled_from(HOSTS), st.text(max_size=20), json_values),
        "KeyGroup": st.one_of(
            st.sampled_from(["RequestHeaders", "requestheaders", None, "Other"]),
            json_values,
        ),
    }
)
steps = st.fixed_dictionaries(
    {},
    optional={
        "Connector": st.one_of(st.sampled_from(["Hook", "hook", ""]), json_values),
        "ConnectorId": st.one_of(st.sampled_from(["hook-1", "other"]), json_values),
        "StopOnError": st.one_of(st.booleans(), json_values),
        "RunAfterOrderIsSaved": st.one_of(st.booleans(), json_values),
        "ErrorStatus": json_values,
        "Properties": st.one_of(st.lists(step_properties, max_size=4), json_values),
    },
)
orders = st.one_of(
    st.fixed_dictionaries(
        {"Id": st.one_of(st.text(max_size=8), numbers, json_values)},
        optional={
            "MarketId": st.one_of(st.sampled_from(["SE", "NO"]), json_values),
            "Errors": json_values,
            "Tags": json_values,
        },
    ),
    json_values,
)
job_like = st.fixed_dictionaries(
    {
        "JobId": st.one_of(st.text(min_size=1, max_size=12), json_values),
        "TenantId": st.one_of(st.sampled_from(["acme", "ghost", "../acme"]), scalars),
        "Step": st.one_of(steps, json_values),
        "Order": orders,
    },
    optional={
        "SchemaVersion": st.one_of(st.just(1), json_values),
        "CorrelationId": st.one_of(st.text(max_size=10), json_values),
        "RunBySystemService": st.one_of(st.booleans(), json_values),
    },
)
jobs = st.one_of(json_values, job_like)

CONNECTOR_KEYS = [
    "Name",
    "ConnectorId",
    "Host",
    "BearerToken",
    "Username",
    "Password",
    "IsAuthenticatedManually",
    "CustomHeaders",
    "TimeOut",
    "DisableStandardErrorPolicy",
    "EnabledForMarkets",
    "DisabledForMarkets",
    "EnabledForMarketGroups",
    "DisabledForMarketGroups",
    "KeepExistingListItems",
    "KeepExistingCustomProperties",
    "SigningSecret",
]
setting_values = st.one_of(
    tenant_json_values,
    st.sampled_from(
        [
            "${SIGN}",
            "${TOKEN}",
            "${MISSING}",
            "${file:/nonexistent/secret}",
            "${not valid}",
            "whsec_abc",
            "00:00:05",
            "30",
            "-00:00:01",
            "1.00:00:00",
            *HOSTS,
        ]
    ),
    st.lists(
        st.fixed_dictionaries(
            {"Key": st.text(max_size=8), "Value": st.text(max_size=8)},
            optional={"Secret": st.one_of(st.booleans(), tenant_json_values)},
        ),
        max_size=2,
    ),
)
connector_like = st.dictionaries(
    st.one_of(st.sampled_from(CONNECTOR_KEYS).flatmap(any_case), st.text(max_size=6)),
    setting_values,
    max_size=8,
)
tenant_documents = st.one_of(
    tenant_json_values,
    st.fixed_dictionaries(
        {
            "Connectors": st.one_of(
                st.lists(connector_like, max_size=3), tenant_json_values
            )
        },
        optional={
            "MarketGroups": st.one_of(
                st.dictionaries(
                    st.text(max_size=5),
                    st.lists(st.sampled_from(["SE", "NO"]), max_size=2),
                    max_size=2,
                ),
                tenant_json_values,
            )
        },
    ),
)
TENANT_ENV = {"SIGN": "whsec_c2lnbmluZy1rZXk=", "TOKEN": "tok-fuzz-9b1c"}


# --- guards and runner -----------------------------------------------------


@contextmanager
def literal_names_only() -> Iterator[None]:
    """Make getaddrinfo refuse any name other than an IP literal or localhost."""
    original = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        text = host.decode() if isinstance(host, bytes) else str(host)
        flags = socket.AI_NUMERICHOST if text != "localhost" else 0
        return original(host, *args, **{**kwargs, "flags": flags})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield


@pytest.fixture(scope="module")
def fuzz_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StepRunner]:
    config_dir = tmp_path_factory.mktemp("fuzz-tenants")
    connector = {
        "Name": "Hook",
        "ConnectorId": "hook-1",
        "Host": URL,
        "TimeOut": "00:00:01",
    }
    text = json.dumps({"Connectors": [connector]})
    (config_dir / "acme.json").write_text(text, encoding="utf-8")
    client = WebhookClient(policy=AddressPolicy(), max_response_bytes=65536)
    runner = StepRunner(tenants=TenantStore(config_dir), client=client, store=None)
    yield runner
    client.close()


OUTCOMES = (Finished, DeadLettered, Reschedule)


# --- jobs ------------------------------------------------------------------


@FUZZ_SETTINGS
@given(job=jobs)
@example(job={"JobId": "j", "TenantId": "acme", "Step": {"Connector": "Hook"}})
@example(
    job={
        "JobId": "j",
        "TenantId": "acme",
        "Step": {"Connector": "Hook"},
        "Order": {"Id": "1", "MarketId": "SE"},
    }
)
@example(
    job={
        "JobId": "j",
        "TenantId": "acme",
        "Step": {"Properties": [{"Key": "Host", "Value": HOSTS[1]}]},
        "Order": {"Id": 1},
    }
)
def test_job_outcome(fuzz_runner: StepRunner, job: Any) -> None:
    with literal_names_only():
        outcome = fuzz_runner.run((job,), {})
    assert isinstance(outcome, OUTCOMES)


@FUZZ_SETTINGS
@given(job=jobs)
def test_job_result_json(fuzz_runner: StepRunner, job: Any) -> None:
    with literal_names_only():
        outcome = fuzz_runner.run((job,), {})
    if isinstance(outcome, Finished):
        result = jsontext.loads(outcome.result_json)
        assert result["ActionStatus"] in ("Success", "Error", "Warning")


@FUZZ_SETTINGS
@given(arguments=st.lists(json_values, max_size=3))
def test_argument_lists(fuzz_runner: StepRunner, arguments: list[Any]) -> None:
    with literal_names_only():
        outcome = fuzz_runner.run(arguments, {})
    assert isinstance(outcome, OUTCOMES)


@pytest.mark.parametrize(
    "progress",
    [
        {"attempts": "x"},
        {"attempts": 1.5e308 * 10},
        {"first_attempt_ms": [1]},
        {"last_status": {"a": 1}},
    ],
)
def test_bad_progress_keyword(fuzz_runner: StepRunner, progress: Any) -> None:
    job = {"JobId": "j", "TenantId": "acme", "Step": {}, "Order": {"Id": "1"}}
    outcome = fuzz_runner.run((job,), {"_progress": progress})
    assert isinstance(outcome, OUTCOMES)


# --- tenant files ----------------------------------------------------------


@pytest.fixture(scope="module")
def tenant_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-tenant-file") / "acme.json"


def parse_only_config_errors(path: Path) -> None:
    with suppress(ConfigError):
        parse_tenant_file(path, "acme", env=TENANT_ENV)


@FUZZ_SETTINGS
@given(document=tenant_documents)
def test_tenant_documents(tenant_path: Path, document: Any) -> None:
    tenant_path.write_text(jsontext.dumps(document), encoding="utf-8")
    parse_only_config_errors(tenant_path)


@FUZZ_SETTINGS
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
@example(content=b"\xff\xfe{}")
@example(content='{"Connectors": [{"Name": "a", "Host": "http://127.0.0.1/"}]}')
def test_tenant_raw_bytes(tenant_path: Path, content: bytes | str) -> None:
    data = content.encode("utf-8") if isinstance(content, str) else content
    tenant_path.write_bytes(data)
    parse_only_config_errors(tenant_path)


@pytest.mark.parametrize(
    "text",
    ["[" * 5000 + "]" * 5000, '{"Connectors": [], "X": ' + "1" * 5000 + "}"],
    ids=["nested-5000", "int-5000-digits"],
)
def test_tenant_parser_limits(tenant_path: Path, text: str) -> None:
    tenant_path.write_text(text, encoding="utf-8")
    parse_only_config_errors(tenant_path)


# --- webhook bodies --------------------------------------------------------


ORDER = {"Id": "1001", "MarketId": "SE", "Status": "New", "Tags": ["a"], "Errors": []}
writable_bodies = st.dictionaries(
    st.one_of(
        st.sampled_from(
            ["Status", "Tags", "Errors", "Assets", "Properties", "Name", "FollowUpDate"]
        ).flatmap(any_case),
        st.text(max_size=6),
    ),
    json_values,
    max_size=5,
)


def check_body(content: bytes, keep_lists: bool, keep_properties: bool) -> None:
    try:
        parsed = _parse_body(content, URL, 200)
    except InvalidResponseBody as error:
        assert error.status == 200
        return
    assert parsed is None or isinstance(parsed, dict)
    try:
        outcome = apply_response(
            ORDER,
            parsed,
            keep_list_items=keep_lists,
            keep_custom_properties=keep_properties,
        )
    except InvalidUpdate:
        return
    assert isinstance(outcome, UpdateOutcome)


@FUZZ_SETTINGS
@given(content=st.binary(max_size=300), keep=st.booleans(), keep_props=st.booleans())
@example(content=b"[" * 100_000, keep=True, keep_props=True)
@example(content=b'{"a":' + b"1" * 5000 + b"}", keep=True, keep_props=True)
@example(content=b'\xef\xbb\xbf{"Status":"x"}', keep=True, keep_props=True)
@example(content=b'{"Status": NaN}', keep=True, keep_props=True)
@example(content=b'{"Status": 1e999}', keep=True, keep_props=True)
def test_raw_bodies(content: bytes, keep: bool, keep_props: bool) -> None:
    check_body(content, keep, keep_props)


@FUZZ_SETTINGS
@given(body=st.one_of(json_values, writable_bodies), keep=st.booleans())
def test_json_bodies(body: Any, keep: bool) -> None:
    check_body(jsontext.dumps(body).encode("utf-8"), keep, not keep)

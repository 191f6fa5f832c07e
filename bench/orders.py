"""Benchmark jobs: a realistic order of about 4 KB, and their task messages."""

from __future__ import annotations

import json
from typing import Any

from worker.message import task_envelope

# The worker's task, and the task of the plain Celery baseline in bench.plain_app.
WORKER_TASK = "webhook_step.execute"
PLAIN_TASK = "bench.plain_post"


def order(order_id: str) -> dict[str, Any]:
    """Return an order with customer, addresses, eight lines and properties (~4 KB)."""
    address = {
        "FirstName": "Anna",
        "LastName": "Lindqvist",
        "Street": "Drottninggatan 12",
        "Street2": "c/o Nordic Outdoor AB, 3 tr",
        "PostalCode": "111 51",
        "City": "Stockholm",
        "CountryCode": "SE",
        "Phone": "+46 70 123 45 67",
        "Email": "anna.lindqvist@example.com",
    }
    lines = [
        {
            "LineNo": index + 1,
            "Sku": f"SKU-{4000 + index * 17}-BLK-{size}",
            "Name": f"Trail running shoe model {index}, black, size {size}",
            "Quantity": 1 + index % 3,
            "UnitPrice": 899.90 + index * 50,
            "Discount": 0.00,
            "VatRate": 25.0,
            "Warehouse": "STO-01",
            "Properties": [
                {"Key": "Color", "Value": "Black"},
                {"Key": "Size", "Value": str(size)},
            ],
        }
        for index, size in enumerate((36, 37, 38, 39, 40, 41, 42, 43))
    ]
    return {
        "Id": order_id,
        "MarketId": "SE",
        "Status": "New",
        "OrderType": "Standard",
        "Currency": "SEK",
        "Total": 8249.40,
        "TotalVat": 1649.88,
        "Created": "2026-12-04T11:59:58.120Z",
        "Customer": {
            "Id": "CUST-778812",
            "Segment": "Loyalty-Gold",
            "Email": "anna.lindqvist@example.com",
        },
        "BillingAddress": address,
        "ShippingAddress": address,
        "Lines": lines,
        "Payments": [
            {
                "Provider": "card",
                "Reference": "psp-8f1c2a77e4",
                "Amount": 8249.40,
                "Captured": False,
            }
        ],
        "Shipping": {
            "Method": "home-delivery",
            "Carrier": "PostNord",
            "Price": 59.00,
            "PromisedDate": "2026-12-08",
            "ServicePoint": {"Id": "SP-4471", "Name": "ICA Nära Vasastan"},
        },
        "Tags": ["web", "campaign-winter"],
        "Properties": [
            {"Key": "Channel", "Value": "web-se"},
            {"Key": "Campaign", "Value": "WINTER26"},
            {"Key": "Note", "Value": "Please leave the parcel at the front desk."},
        ],
        "Errors": [],
    }


def job(job_id: str, tenant_id: str, *, delayed: bool = False) -> dict[str, Any]:
    """Return a webhook-step job; ``delayed`` sets RunAfterOrderIsSaved."""
    return {
        "JobId": job_id,
        "TenantId": tenant_id,
        "CorrelationId": f"wf-{job_id}",
        "RunBySystemService": True,
        "Step": {
            "Name": "WebhookWorkflowStep",
            "Connector": "Webhook",
            "RunAfterOrderIsSaved": delayed,
            "StopOnError": True,
            "ErrorStatus": "ValidationFailed",
        },
        "Order": order(f"ORD-{job_id}"),
    }


def envelope(queue: str, task_name: str, job_value: dict[str, Any]) -> str:
    """Return the kombu Redis envelope that ``LPUSH <queue>`` enqueues as a task.

    The format is Celery protocol 2, as in the README's "Sending jobs from
    another language".
    """
    task_id = str(job_value["JobId"])
    args_json = json.dumps([job_value], separators=(",", ":"))
    return task_envelope(
        queue,
        args_json,
        task_id=task_id,
        task=task_name,
        argsrepr=f"(job_id={task_id})",
        origin="bench",
    )

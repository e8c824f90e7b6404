"""What the Grafana JSON data source plugin (simpod-json-datasource >= 0.6) sends to a backend
and accepts back, route by route, as its published API defines the shapes: route names,
fields, their JSON types, which are required, allowed values. Written for
tests/unit/test_grafana_protocol.py as JSON Schema (draft 2020-12, formats checked).

ROUTES maps each route to its HTTP method, whether a request must have a body, the schema of
that body (None: the plugin sends none) and the schema of a 200 answer (None: the plugin
only looks at the status). Objects allow fields not named here, as the plugin's API does.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

TEXT: Schema = {"type": "string"}
NUMBER: Schema = {"type": "number"}
FLAG: Schema = {"type": "boolean"}
ANY_OBJECT: Schema = {"type": "object"}
WHEN: Schema = {"type": "string", "format": "date-time"}


def record(required: tuple[str, ...] = (), **fields: Schema) -> Schema:
    """An object with these fields, the `required` ones present."""
    return {"type": "object", "properties": fields, "required": list(required)}


def many(item: Schema, *, exactly: int | None = None) -> Schema:
    """An array of `item`s (of exactly that many, if given)."""
    shape: Schema = {"type": "array", "items": item}
    if exactly is not None:
        shape |= {"minItems": exactly, "maxItems": exactly}
    return shape


def some(*choices: Schema) -> Schema:
    return {"anyOf": list(choices)}


# Relative bounds as typed in the time picker ("now-6h"), next to the absolute ones.
RAW_RANGE = record(**{"from": TEXT, "to": TEXT})
RANGE = record(**{"from": WHEN, "to": WHEN, "raw": RAW_RANGE})

# One input of a metric's payload in the query editor and the choices it offers.
CHOICE = record(("value",), label=TEXT, value=TEXT)
PAYLOAD_INPUT = record(
    ("name",),
    name=TEXT,
    label=TEXT,
    type={"enum": ["select", "multi-select", "input", "textarea"]},
    placeholder=TEXT,
    reloadMetric=FLAG,
    width={"type": "integer"},
    options=many(CHOICE),
)

SERIES = record(
    ("target", "datapoints"),
    target=TEXT,
    datapoints=many(many(NUMBER, exactly=2)),  # [value, unix time in ms]
)
# The plugin's schema types each element of `rows` as a single string or number, while its
# own example, and every table Grafana draws, has rows that are arrays of such cells: this
# describes the latter.
TABLE = record(
    ("type", "columns", "rows"),
    type={"enum": ["table"]},
    columns=many(record(("text",), text=TEXT, type=TEXT)),
    rows=many(many(some(TEXT, NUMBER))),
)

# /variable answers either a list of items or one data frame. The plugin reads `__text` and
# `__value` from an item, while its schema requires `text` and `value` of it.
VARIABLE_ITEM = record(("text", "value"), __text=TEXT, __value=TEXT)
DATA_FRAME = record(
    ("fields",), fields=many(record(("name", "values"), name=TEXT, values=many({})))
)

ROUTES: dict[str, dict[str, Any]] = {
    "/": {  # "Save & test": any 200 passes
        "method": "get",
        "body_required": False,
        "request": None,
        "response": None,
    },
    "/metrics": {  # the metric list of the query editor, with each metric's payload inputs
        "method": "post",
        "body_required": False,
        "request": record(metric=TEXT, payload=ANY_OBJECT),
        "response": many(
            record(("value", "payloads"), value=TEXT, label=TEXT, payloads=many(PAYLOAD_INPUT))
        ),
    },
    "/metric-payload-options": {  # choices of a select input whose `options` are empty
        "method": "post",
        "body_required": False,
        "request": record(
            ("metric", "payload", "name"), metric=TEXT, payload=ANY_OBJECT, name=TEXT
        ),
        "response": many(CHOICE),
    },
    "/query": {  # the data of a panel: one series or table per target
        "method": "post",
        "body_required": True,
        "request": record(
            panelId=some(TEXT, NUMBER),  # a number on dashboards, a string in Explore
            range=RANGE,
            rangeRaw=RAW_RANGE,
            interval=TEXT,
            intervalMs=NUMBER,
            maxDataPoints=NUMBER,
            targets=many(record(("target",), target=TEXT, refId=TEXT, payload=ANY_OBJECT)),
            scopedVars=ANY_OBJECT,
            filters=many(record(key=TEXT, operator=TEXT, value=TEXT)),
        ),
        "response": many(some(SERIES, TABLE)),
    },
    "/variable": {  # the values of a dashboard variable of type Query
        "method": "post",
        "body_required": True,
        "request": record(
            payload=record(("target",), target=TEXT, variables=ANY_OBJECT),
            range=RANGE,
        ),
        "response": {"oneOf": [many(VARIABLE_ITEM), DATA_FRAME]},
    },
    "/tag-keys": {  # the keys an ad hoc filter offers
        "method": "post",
        "body_required": False,
        "request": None,
        "response": many(record(type=TEXT, text=TEXT)),
    },
    "/tag-values": {  # the values an ad hoc filter offers for one key
        "method": "post",
        "body_required": True,
        "request": record(("key",), key=TEXT),
        # The plugin's schema leaves this answer open; the plugin shows each item's `text`.
        "response": many(record(("text",), text=TEXT)),
    },
}

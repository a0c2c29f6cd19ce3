"""Schemathesis hooks for exdaas: a serializer for the NDJSON import body,
and a workaround for a CPython 3.11 bug that schemathesis's generators hit.

The import route takes `application/x-ndjson`, documented as the array of
JSON values its lines are; schemathesis generates the array and this writes
one value per line, as clients send it.
"""

import json

import schemathesis
from hypothesis.internal import lambda_sources

_describe_lambda = lambda_sources._lambda_description


def _describe_lambda_or_not(f, *args, **kwargs):
    """Hypothesis names a strategy's lambdas (for its repr alone) by parsing
    their source file. Deep inside schemathesis's generators, CPython 3.11's
    parser then raises "SystemError: AST constructor recursion depth
    mismatch" (a CPython bug), which schemathesis reports as an error of the
    operation. A lambda whose source cannot be parsed there goes unnamed."""
    try:
        return _describe_lambda(f, *args, **kwargs)
    except SystemError:
        return "lambda: <source not parsed>"


lambda_sources._lambda_description = _describe_lambda_or_not


@schemathesis.serializer("application/x-ndjson")
def to_ndjson(ctx, value):
    """One JSON value per line. A generated value that is not an array (a
    negative case) is sent as what is not NDJSON at all: bytes that are not
    UTF-8, which the server refuses whole."""
    if isinstance(value, list):
        return b"".join(json.dumps(item).encode() + b"\n" for item in value)
    return b"\xff" + json.dumps(value).encode() + b"\n"


# Change-feed reads that wait: a long poll waits up to `timeout` (5 minutes
# at most) and an event stream never ends. Fuzzing keeps every wait short,
# as a stream is covered by the integration tests, so the run's time goes to
# many requests rather than a few held ones. Only valid values are changed:
# an invalid one must still be refused.
_SHORT_WAIT_MS = 200


def _valid_timeout(value):
    try:
        ms = int(value)
    except (TypeError, ValueError):
        return None
    return ms if 0 <= ms <= 300_000 and str(value).strip().lstrip("+").isdigit() else None


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if not case.operation.path.endswith("/changes") or not isinstance(case.query, dict):
        return
    if case.query.get("feed") == "eventsource":
        case.query["feed"] = "longpoll"
    if case.query.get("feed") == "longpoll":
        ms = _valid_timeout(case.query.get("timeout", 25_000))
        if ms is not None and ms > _SHORT_WAIT_MS:
            case.query["timeout"] = _SHORT_WAIT_MS

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


# Change-feed reads that wait: a long poll waits up to `wait` seconds (300
# at most) and an event stream (`Accept: text/event-stream`) never ends.
# Fuzzing keeps every wait short, as streams are covered by the integration
# tests, so the run's time goes to many requests rather than a few held
# ones. Only valid values are changed: an invalid one must still be refused.
def _valid_wait(value):
    text = str(value).strip()
    return int(text) if text.isdigit() and int(text) <= 300 else None


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if not case.operation.path.endswith("/changes"):
        return
    if isinstance(case.headers, dict):
        for name in [n for n in case.headers if n.lower() == "accept"]:
            del case.headers[name]
    if isinstance(case.query, dict) and "wait" in case.query:
        wait = _valid_wait(case.query["wait"])
        if wait is not None and wait > 1:
            case.query["wait"] = 1

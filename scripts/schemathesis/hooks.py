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

"""Schemathesis hooks for fuzzing the services from their OpenAPI documents.

A generated request that carries a valid Idempotency-Key gets a key of its own. The
generator draws keys from a small space, so two different bodies would otherwise share a
key, and the service rightly refuses the second (422, "Idempotency-Key reused"), which
the fuzzer would count as valid data rejected. Invalid keys are left as generated, so
their refusal (400) is still tested.
"""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    # Right before each request, in every phase (coverage and examples included).
    headers = case.headers
    if headers:
        for name in list(headers):
            if name.lower() == "idempotency-key":
                key = headers[name]
                if isinstance(key, str) and len(key) <= 255 and VALID_KEY.fullmatch(key):
                    headers[name] = f"fuzz-{uuid.uuid4()}"

"""One place maps exceptions to status codes: a person's mistake is INVALID_ARGUMENT or NOT_FOUND;
a bug (TypeError, AttributeError, ...) is INTERNAL, never disguised as a bad request."""
from __future__ import annotations

import grpc
import pytest

from tunerd.api.http import sampling
from tunerd.errors import http_error_for, status_for
from tunerd.jobs.refs import AmbiguousJobRef
from tunerd.jobs.store import JobNotFound


@pytest.mark.parametrize("error, code", [
    (ValueError("lora_r: must be > 0"), grpc.StatusCode.INVALID_ARGUMENT),
    (AmbiguousJobRef("2026", ["20261123-135534-1a2b3c", "20261123-135541-4d5e6f"]), grpc.StatusCode.INVALID_ARGUMENT),
    (JobNotFound("1999"), grpc.StatusCode.NOT_FOUND),
    (TypeError("f() got an unexpected keyword argument 'x'"), grpc.StatusCode.INTERNAL),
    (AttributeError("'NoneType' object has no attribute 'x'"), grpc.StatusCode.INTERNAL),
])
def test_status_for(error, code):
    assert status_for(error)[0] == code


def test_ambiguous_prefix_names_the_candidates():
    msg = status_for(AmbiguousJobRef("2026", ["20261123-135534-1a2b3c", "20261123-135541-4d5e6f"]))[1]
    assert "20261123-135534-1a2b3c" in msg and "20261123-135541-4d5e6f" in msg


@pytest.mark.parametrize("body", [{"temperature": "hot"}, {"max_tokens": 1.5}, {"seed": True}])
def test_http_sampling_of_the_wrong_type_is_a_400_not_a_500(body):
    with pytest.raises(ValueError) as e:
        sampling(body)
    assert http_error_for(e.value)[0] == 400

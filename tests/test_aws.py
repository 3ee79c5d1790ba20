"""AwsAccess resolves region, endpoint and credentials the same way for every command
(no network: nothing here sends a request)."""

from __future__ import annotations

import pytest

from kvs_toolkit.aws import AwsAccess, is_loopback_url
from kvs_toolkit.errors import ConfigurationError, CredentialsError
from kvs_toolkit.retry import RetryPolicy, TokenBucket


@pytest.mark.parametrize(
    ("url", "local"),
    [("http://127.0.0.1:4567", True), ("http://localhost", True), ("https://[::1]:1", True),
     ("http://127.9.9.9", True), ("https://kinesisvideo.us-east-1.amazonaws.com", False),
     ("http://192.0.2.1:4567", False), (None, False)],
)  # fmt: skip
def test_loopback_urls(url: str | None, local: bool) -> None:
    assert is_loopback_url(url) is local


def test_a_local_endpoint_needs_no_configuration(no_aws_config: None) -> None:
    aws = AwsAccess(endpoint_url="http://127.0.0.1:4567")
    assert aws.region == "us-east-1"
    assert aws.credentials.access_key == "KVSTOOLKITLOCAL"
    client = aws.client("kinesisvideo")
    assert client.meta.endpoint_url == "http://127.0.0.1:4567"
    # placeholder credentials never go to a service elsewhere
    with pytest.raises(CredentialsError, match="no AWS credentials found for rekognition"):
        aws.client("rekognition")


def test_against_aws_a_missing_region_or_credential_is_one_clear_error(
    no_aws_config: None,
) -> None:
    with pytest.raises(ConfigurationError, match="no AWS region: pass --region"):
        _ = AwsAccess().region
    with pytest.raises(CredentialsError, match="no AWS credentials found"):
        _ = AwsAccess(region_name="eu-west-1").credentials
    with pytest.raises(CredentialsError, match="profile 'nobody' is not in the AWS config"):
        _ = AwsAccess(profile="nobody", region_name="eu-west-1").credentials
    with pytest.raises(ConfigurationError, match="is not an http"):
        AwsAccess(endpoint_url="127.0.0.1:4567")


def test_environment_order(no_aws_config: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert AwsAccess().region == "eu-west-1"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")  # AWS_REGION wins, as in the SDKs
    assert AwsAccess().region == "ap-south-1"
    assert AwsAccess(region_name="us-west-2").region == "us-west-2"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS_VIDEO", "http://127.0.0.1:2")
    assert AwsAccess().endpoint_url == "http://127.0.0.1:2"
    assert AwsAccess(endpoint_url="http://127.0.0.1:3").endpoint_url == "http://127.0.0.1:3"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert AwsAccess().credentials.access_key == "AKIDENV"  # real ones win over placeholders


def test_retry_policy_is_bounded_with_equal_jitter() -> None:
    policy = RetryPolicy(max_attempts=3, base_s=1.0, max_s=4.0)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (9, 4.0)):
        delay = policy.delay(attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert not policy.gives_up_after(2) and policy.gives_up_after(3)
    assert policy.describe(2) == "attempt 2/3"
    assert RetryPolicy(max_attempts=None).describe(7) == "attempt 7"
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_token_bucket_with_an_injected_clock() -> None:
    now = [0.0]
    slept: list[float] = []
    bucket = TokenBucket(2.0, burst=2, clock=lambda: now[0], sleep=slept.append)
    assert bucket.try_acquire() and bucket.try_acquire() and not bucket.try_acquire()
    now[0] = 0.5  # one token back at 2/s
    assert bucket.try_acquire() and not bucket.try_acquire()
    assert bucket.acquire() == pytest.approx(0.5) and slept == [pytest.approx(0.5)]


def test_aws_region_reaches_the_rekognition_model(
    no_aws_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`AWS_REGION=us-east-1 kvs consume ... --model rekognition-labels` used to stop with
    "You must specify a region" (boto3 without AWS_DEFAULT_REGION); building the model
    sends no request."""
    from kvs_toolkit.analysis.models import model_detector

    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    detector = model_detector("rekognition-labels", min_confidence=0.8)
    client = detector.detector._client  # type: ignore[attr-defined]
    assert client.meta.region_name == "us-east-1"

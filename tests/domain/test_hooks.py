"""Hook signatures, delivery bodies and plan templates, without servers."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orchestrator.domain.files import EXTENSIONS, FileType
from orchestrator.domain.hooks import (
    SAMPLE,
    VERSION,
    Deploy,
    Ignored,
    Scheme,
    SignatureError,
    check_secret,
    check_template,
    deploy_of,
    new_secret,
    render,
    sign_github,
    sign_standard,
    uses,
    verify,
)
from orchestrator.domain.notices import Notice, notice_of
from orchestrator.domain.states import RolloutState
from orchestrator.errors import InvalidInput

NOW = 1_700_000_000

# GitHub's published example ("Validating webhook deliveries").
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

# The Standard Webhooks reference libraries' example.
STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STANDARD_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
STANDARD_TIMESTAMP = 1614265330
STANDARD_BODY = b'{"test": 2432232314}'
STANDARD_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_github_signature_matches_githubs_published_example() -> None:
    assert sign_github(GITHUB_SECRET, GITHUB_BODY) == GITHUB_SIGNATURE


def test_standard_signature_matches_the_published_example() -> None:
    signature = sign_standard(STANDARD_SECRET, STANDARD_ID, STANDARD_TIMESTAMP, STANDARD_BODY)
    assert signature == STANDARD_SIGNATURE


def standard_headers(signature: str = STANDARD_SIGNATURE, **more: str) -> dict[str, str]:
    return {
        "webhook-id": STANDARD_ID,
        "webhook-timestamp": str(STANDARD_TIMESTAMP),
        "webhook-signature": signature,
        **more,
    }


def test_the_published_standard_example_verifies_within_five_minutes() -> None:
    signed = verify(
        STANDARD_SECRET,
        standard_headers(),
        STANDARD_BODY,
        now_s=STANDARD_TIMESTAMP + 299,
        body_digest="x",
    )
    assert signed.scheme is Scheme.STANDARD
    assert signed.delivery_id == STANDARD_ID


def test_a_standard_signature_among_several_is_enough() -> None:
    headers = standard_headers(f"v1,bm90IGl0 {STANDARD_SIGNATURE}")
    signed = verify(
        STANDARD_SECRET, headers, STANDARD_BODY, now_s=STANDARD_TIMESTAMP, body_digest=""
    )
    assert signed.delivery_id == STANDARD_ID


@pytest.mark.parametrize("skew_s", [301, -301, 86_400])
def test_a_stale_or_future_timestamp_is_refused_naming_the_limit(skew_s: int) -> None:
    with pytest.raises(SignatureError, match="over the 300s allowed"):
        verify(
            STANDARD_SECRET,
            standard_headers(),
            STANDARD_BODY,
            now_s=STANDARD_TIMESTAMP + skew_s,
            body_digest="",
        )


def test_a_tampered_body_fails_both_schemes() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        verify(
            STANDARD_SECRET,
            standard_headers(),
            STANDARD_BODY + b" ",
            now_s=STANDARD_TIMESTAMP,
            body_digest="",
        )
    with pytest.raises(SignatureError, match="does not match the body"):
        verify(
            GITHUB_SECRET,
            {"x-hub-signature-256": GITHUB_SIGNATURE},
            GITHUB_BODY + b"!",
            now_s=NOW,
            body_digest="",
        )


def test_the_github_delivery_header_names_the_delivery() -> None:
    headers = {"x-hub-signature-256": GITHUB_SIGNATURE, "x-github-delivery": "d-1"}
    signed = verify(GITHUB_SECRET, headers, GITHUB_BODY, now_s=NOW, body_digest="abc")
    assert (signed.scheme, signed.delivery_id) == (Scheme.GITHUB, "d-1")
    headers.pop("x-github-delivery")
    unnamed = verify(GITHUB_SECRET, headers, GITHUB_BODY, now_s=NOW, body_digest="abc")
    assert unnamed.delivery_id == "sha256:abc"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "not signed"),
        ({"webhook-signature": STANDARD_SIGNATURE}, "needs webhook-id and webhook-timestamp"),
        (
            {"webhook-signature": "x", "webhook-id": "m", "webhook-timestamp": "soon"},
            "whole seconds",
        ),
    ],
)
def test_missing_signature_parts_are_named(headers: dict[str, str], message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(STANDARD_SECRET, headers, b"{}", now_s=NOW, body_digest="")


def test_a_generated_secret_is_a_standard_webhooks_secret_and_accepted() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert check_secret(secret) == secret
    assert new_secret() != secret


@pytest.mark.parametrize("secret", ["short", "whsec_not*base64*at*all!!", "x" * 300])
def test_unusable_secrets_are_refused(secret: str) -> None:
    with pytest.raises(InvalidInput, match="secret"):
        check_secret(secret)


def test_a_generic_body_deploys_its_version_and_file() -> None:
    wanted = deploy_of(b'{"version": "2.1.0", "file": "fw-2.1.0.bin"}', None)
    assert wanted == Deploy(version="2.1.0", file="fw-2.1.0.bin")
    assert deploy_of(b'{"version": "2.1.0"}', None) == Deploy(version="2.1.0", file=None)


def release(tag: str, action: str = "published", assets: list[str] | None = None) -> bytes:
    return json.dumps(
        {
            "action": action,
            "release": {"tag_name": tag, "assets": [{"name": n} for n in assets or []]},
        }
    ).encode()


def test_a_published_release_deploys_its_tag_without_the_leading_v() -> None:
    wanted = deploy_of(release("v2.1.0", assets=["fw-2.1.0.bin", "notes.txt"]), "release")
    assert wanted == Deploy(version="2.1.0", file="fw-2.1.0.bin")
    assert deploy_of(release("2.1.0"), "release") == Deploy(version="2.1.0", file=None)
    # Two firmware assets: which one is meant is not guessed.
    assert deploy_of(release("v3", assets=["a.bin", "b.bin"]), "release") == Deploy("3", None)


def test_a_release_not_published_and_a_ping_are_answered_but_deploy_nothing() -> None:
    assert isinstance(deploy_of(release("v2.1.0", action="created"), "release"), Ignored)
    assert isinstance(deploy_of(b'{"zen": "Keep it simple."}', "ping"), Ignored)


@pytest.mark.parametrize(
    ("body", "event", "message"),
    [
        (b"not json", None, "not JSON"),
        (b"[1, 2]", None, "not a JSON object"),
        (b'{"file": "fw.bin"}', None, 'no "version"'),
        (b'{"ref": "main"}', "push", "'push' is not a release"),
        (b'{"version": "2.1.0\\nname: evil"}', None, "version"),
        (b'{"version": "2.1.0", "file": "../etc/passwd"}', None, "not a firmware file name"),
        (b'{"version": "2.1.0", "file": "notes.txt"}', None, "not a firmware file name"),
    ],
)
def test_bodies_that_are_not_deploys_are_refused_naming_why(
    body: bytes, event: str | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        deploy_of(body, event)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"version": "2.1.0", "build": NaN}', "build is NaN"),
        (b'{"version": "2.1.0", "sizes": [1, Infinity]}', "sizes.1 is Infinity"),
        (b'{"version": "2.1.0", "x": {"y": -Infinity}}', "x.y is -Infinity"),
        (b'{"version": "2.1.0", "x": 1e999}', "x is 1e999"),
        (b'{"version": "2.1.0", "x": ' + b"1" * 5000 + b"}", "5000 digits"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b'{"version": "2.1.0", "x": "\\ud800"}', "x is not valid Unicode"),
    ],
)
def test_bodies_python_reads_but_json_does_not_allow_are_refused_naming_where(
    body: bytes, message: str
) -> None:
    """NaN, Infinity, out-of-range and overlong numbers, deep nesting: InvalidInput, not a crash."""
    with pytest.raises(InvalidInput, match=message):
        deploy_of(body, None)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Bodies shaped like what the hook reads, with any value in any place.
DELIVERY_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "version": JSON_VALUES | st.sampled_from(["2.1.0", "v2", "", "2.1.0 x"]),
        "file": JSON_VALUES | st.sampled_from(["fw-2.1.0.bin", "notes.txt", "../x.bin"]),
        "action": JSON_VALUES | st.sampled_from(["published", "created"]),
        "build": st.floats(),  # a field the hook does not read: NaN there is still refused
        "release": JSON_VALUES
        | st.fixed_dictionaries(
            {},
            optional={
                "tag_name": JSON_VALUES | st.sampled_from(["v2.1.0", "V", "v", "2.1.0"]),
                "assets": JSON_VALUES
                | st.lists(
                    st.fixed_dictionaries(
                        {}, optional={"name": JSON_VALUES | st.sampled_from(["a.bin", "b.hex"])}
                    ),
                    max_size=3,
                ),
            },
        ),
    },
)


def non_finite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(non_finite(item) for item in value.values())
    if isinstance(value, list):
        return any(non_finite(item) for item in value)
    return False


def _outcome(body: bytes, event: str | None) -> Deploy | Ignored | InvalidInput:
    """What deploy_of makes of a delivery; any exception but InvalidInput fails the test."""
    try:
        return deploy_of(body, event)
    except InvalidInput as refused:
        return refused


def _assert_clear(refused: InvalidInput) -> None:
    assert refused.message
    assert refused.errors[0]["loc"].startswith("body")


@hypothesis_settings(database=None, max_examples=200)
@given(
    value=DELIVERY_BODIES | JSON_VALUES,
    event=st.sampled_from([None, "", "release", "ping", "push"]),
)
@example(value={"version": "2.1.0", "build": math.inf}, event=None)
def test_any_json_delivery_is_a_deploy_an_ignored_event_or_a_clear_refusal(
    value: object, event: str | None
) -> None:
    """Never an unexpected exception; a body carrying NaN or Infinity is never a deploy."""
    # Python writes NaN and Infinity where json.dumps meets them; a sender may too.
    wanted = _outcome(json.dumps(value).encode(), event)
    if isinstance(wanted, InvalidInput):
        _assert_clear(wanted)
    elif isinstance(wanted, Deploy):
        assert not non_finite(value)
        assert VERSION.match(wanted.version)
        assert wanted.file is None or wanted.file.endswith(EXTENSIONS[FileType.FIRMWARE])


@hypothesis_settings(database=None, max_examples=200)
@given(body=st.binary(max_size=200), event=st.sampled_from([None, "release", "ping"]))
def test_any_delivery_bytes_are_a_deploy_an_ignored_event_or_a_clear_refusal(
    body: bytes, event: str | None
) -> None:
    wanted = _outcome(body, event)
    if isinstance(wanted, InvalidInput):
        _assert_clear(wanted)


@pytest.mark.parametrize("timestamp", ["\u00b3", "\u0663" * 10, "1" * 5000, "-1", "1.5"])
def test_a_webhook_timestamp_that_is_not_ascii_seconds_is_refused_as_such(timestamp: str) -> None:
    """str.isdigit() takes '³' and '٣'; int() refuses the first and 5,000 digits."""
    headers = {"webhook-signature": "v1,x", "webhook-id": "m", "webhook-timestamp": timestamp}
    with pytest.raises(SignatureError, match="whole seconds"):
        verify(STANDARD_SECRET, headers, b"{}", now_s=NOW, body_digest="")


TEMPLATE = """name: fw-${version}
firmware: {file: "${file}", version: "${version}"}
waves: [{percent: 100}]
"""


def test_a_template_renders_every_placeholder() -> None:
    plan = render(TEMPLATE, {"version": "2.1.0", "file": "fw.bin"})
    assert "${" not in plan
    assert plan.startswith("name: fw-2.1.0\n")
    assert uses(TEMPLATE, "file")
    assert not uses("name: x-${version}", "file")
    check_template(render(TEMPLATE, SAMPLE))


def test_an_unknown_placeholder_is_located() -> None:
    with pytest.raises(InvalidInput, match=r"plan:2:18: \$\{release\} is not a placeholder"):
        check_template("name: a\nfirmware: {file: ${release}}\n")


@pytest.mark.parametrize(
    ("action", "from_state", "to_state", "notice"),
    [
        ("start", "pending", "running", Notice.STARTED),
        ("resume", "paused", "running", Notice.RESUMED),
        ("promote", "waiting_approval", "running", Notice.RESUMED),
        ("halt", "running", "halted", Notice.HALTED),
        ("wait_approval", "running", "waiting_approval", Notice.WAITING_APPROVAL),
        ("complete", "running", "completed", Notice.COMPLETED),
        ("rollback_done", "rolling_back", "rolled_back", Notice.ROLLED_BACK),
        ("wave_start", "", "", Notice.WAVE_COMPLETED),
        ("wave_done", "", "", None),
        ("create", "", "pending", None),
    ],
)
def test_audit_entries_map_to_notices(
    action: str, from_state: str, to_state: str, notice: Notice | None
) -> None:
    assert notice_of(action, from_state, to_state) is notice


def test_entering_every_state_but_pending_gives_a_notice_and_a_name_that_is_no_state_none() -> None:
    entered = {state: notice_of("x", "pending", state) for state in RolloutState}
    assert entered.pop(RolloutState.PENDING) is None  # nothing changed
    assert entered.pop(RolloutState.RUNNING) is Notice.STARTED
    assert {state.value: notice for state, notice in entered.items()} == {
        state.value: Notice(state.value) for state in entered
    }
    assert notice_of("x", "running", "started") is None  # a notice's name, not a state


@pytest.mark.parametrize(
    "body",
    [
        b'{"version": "1.0\\n", "file": "fw.bin"}',
        b'{"action": "published", "release": {"tag_name": "v2.0.0\\n"}}',
    ],
)
def test_a_version_with_a_trailing_newline_is_not_a_deploy(body: bytes) -> None:
    with pytest.raises(InvalidInput, match="version"):
        deploy_of(body, None)

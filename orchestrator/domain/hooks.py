"""Deploy hooks: plan templates, delivery signatures, and what a delivery asks to deploy.

A hook is a plan template with `${version}` and `${file}` placeholders and a secret. A
delivery is signed either the GitHub way (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of
the raw body>`, the secret's text as the key) or the Standard Webhooks way (`webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, the
key being the base64 after `whsec_`, or the secret's text when it has no such prefix).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.domain.files import EXTENSIONS, FILE_NAME, FileType
from orchestrator.domain.plans import Plan, parse_plan
from orchestrator.errors import InvalidInput
from orchestrator.jsonutil import loads
from orchestrator.numerals import whole_number

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
VARIABLES = ("version", "file")
# A version is pasted into YAML: letters, digits and . _ + - only, so it cannot add keys.
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
SAMPLE = {"version": "0.0.0-sample", "file": "sample-firmware.bin"}
TOLERANCE_S = 5 * 60  # how far a Standard Webhooks timestamp may be from now
TIMESTAMP_DIGITS = 12  # of webhook-timestamp, in seconds: 10 until the year 2286
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
SECRET_BYTES = 24
MAX_SECRET = 256


class Scheme(StrEnum):
    """How a delivery was signed."""

    GITHUB = "github"
    STANDARD = "standard"


class SignatureError(Exception):
    """A delivery whose signature is missing, wrong or stale; `str()` says which and why."""


@dataclass(frozen=True)
class Signed:
    """A delivery whose signature holds: the scheme and the delivery id it carries."""

    scheme: Scheme
    delivery_id: str


@dataclass(frozen=True)
class Deploy:
    """What a delivery asks to deploy."""

    version: str
    file: str | None


@dataclass(frozen=True)
class Ignored:
    """A signed delivery that is not a deploy but is answered 200 (a GitHub ping)."""

    why: str


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def check_secret(secret: str) -> str:
    """`secret` if it can sign deliveries; InvalidInput naming the problem otherwise."""
    if not 16 <= len(secret) <= MAX_SECRET or not secret.isprintable():
        raise InvalidInput(
            f"secret must be 16 to {MAX_SECRET} printable characters, got {len(secret)}; "
            "leave it out and the service generates one",
            errors=[{"loc": "body.secret", "msg": "16 to 256 printable characters"}],
        )
    if secret.startswith(SECRET_PREFIX):
        try:
            base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except binascii.Error:
            raise InvalidInput(
                "a secret starting with whsec_ must be base64 after the prefix (the Standard "
                "Webhooks form); fix it or leave the secret out to have one generated",
                errors=[{"loc": "body.secret", "msg": "not base64 after whsec_"}],
            ) from None
    return secret


def secret_or_new(secret: str | None) -> str:
    """The secret given, once checked (`check_secret`), or a new one when none is given."""
    return new_secret() if secret is None else check_secret(secret)


def _standard_key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    return secret.encode()


def sign_github(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sign_standard(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value (one `v1,` signature) for this delivery."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(_standard_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now_s: float, body_digest: str
) -> Signed:
    """Check a delivery's signature; Signed, or SignatureError saying what is wrong.

    `headers` has lower-case names. Standard Webhooks headers win when both kinds are sent.
    A GitHub delivery without `X-GitHub-Delivery` is identified by `body_digest`.
    """
    if "webhook-signature" in headers:
        return _verify_standard(secret, headers, body, now_s)
    github = headers.get("x-hub-signature-256")
    if github is None:
        raise SignatureError(
            "the delivery is not signed; send X-Hub-Signature-256 (GitHub) or the Standard "
            "Webhooks headers webhook-id, webhook-timestamp and webhook-signature, made with "
            "the hook's secret"
        )
    if not hmac.compare_digest(github.strip().encode(), sign_github(secret, body).encode()):
        raise SignatureError(
            "X-Hub-Signature-256 does not match the body; sign the raw body with the hook's "
            "secret (sha256=<hex HMAC-SHA256>)"
        )
    delivery_id = headers.get("x-github-delivery", "").strip() or f"sha256:{body_digest}"
    return Signed(Scheme.GITHUB, delivery_id)


def _verify_standard(secret: str, headers: Mapping[str, str], body: bytes, now_s: float) -> Signed:
    delivery_id = headers.get("webhook-id", "").strip()
    raw_timestamp = headers.get("webhook-timestamp", "").strip()
    if not delivery_id or not raw_timestamp:
        raise SignatureError(
            "webhook-signature needs webhook-id and webhook-timestamp beside it (Standard "
            "Webhooks); send all three"
        )
    timestamp = whole_number(raw_timestamp, max_digits=TIMESTAMP_DIGITS)
    if timestamp is None:
        shown = raw_timestamp[: TIMESTAMP_DIGITS * 2]
        raise SignatureError(f"webhook-timestamp must be whole seconds since 1970, got {shown!r}")
    if abs(now_s - timestamp) > TOLERANCE_S:
        raise SignatureError(
            f"webhook-timestamp {timestamp} is {abs(now_s - timestamp):.0f}s from the "
            f"service's clock, over the {TOLERANCE_S}s allowed; sign each delivery when it is "
            "sent, and check the sender's clock"
        )
    expected = sign_standard(secret, delivery_id, timestamp, body).encode()
    # The header may carry several space-separated signatures (a secret being rotated).
    for candidate in headers["webhook-signature"].split():
        if hmac.compare_digest(candidate.encode(), expected):
            return Signed(Scheme.STANDARD, delivery_id)
    raise SignatureError(
        "webhook-signature does not match; sign 'webhook-id.webhook-timestamp.body' with "
        "the hook's secret (v1,<base64 HMAC-SHA256>)"
    )


def deploy_of(body: bytes, event: str | None) -> Deploy | Ignored:
    """What a signed delivery asks for; InvalidInput when it is not a deploy.

    `event` is GitHub's `X-GitHub-Event`. A `release` event deploys its `tag_name` (a leading
    `v` removed) once it is published; `${file}` is its one firmware asset, if it has one.
    Any other body must be `{"version": ..., "file": ...}` (`file` may be left out when the
    hook's template does not use it).
    """
    if event == "ping":
        return Ignored("GitHub ping: the hook is reachable and the signature holds")
    data = loads(body)  # standard JSON only: what it refuses, it names
    if not isinstance(data, dict):
        raise _not_deploy("the body is not a JSON object")
    release = data.get("release")
    if event == "release" or (isinstance(release, dict) and "tag_name" in release):
        return _release(data)
    if event not in (None, ""):
        raise _not_deploy(f"GitHub event {event!r} is not a release")
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise _not_deploy('the body has no "version"')
    file = data.get("file")
    if file is not None and not isinstance(file, str):
        raise _not_deploy('"file" must be a file name')
    return Deploy(version=check_version(version), file=check_file(file) if file else None)


def _release(data: dict[str, object]) -> Deploy | Ignored:
    action = data.get("action")
    if action not in (None, "published"):
        return Ignored(f"release {action}: only a published release deploys")
    release = data.get("release")
    tag = release.get("tag_name") if isinstance(release, dict) else None
    if not isinstance(tag, str) or not tag:
        raise _not_deploy("the release event has no release.tag_name")
    version = tag[1:] if tag[:1] in ("v", "V") and tag[1:2].isdigit() else tag
    assets = release.get("assets") if isinstance(release, dict) else None
    names = [
        asset["name"]
        for asset in (assets if isinstance(assets, list) else [])
        if isinstance(asset, dict)
        and isinstance(asset.get("name"), str)
        and asset["name"].endswith(EXTENSIONS[FileType.FIRMWARE])
    ]
    file = names[0] if len(names) == 1 else None
    return Deploy(version=check_version(version), file=check_file(file) if file else None)


def _not_deploy(why: str) -> InvalidInput:
    return InvalidInput(
        f'{why}, so it is not a deploy; send {{"version": "2.1.0", "file": '
        '"fw-2.1.0.bin"}, or a GitHub release event',
        errors=[{"loc": "body", "msg": why}],
    )


def check_version(version: str) -> str:
    """`version` if it can go into a plan; InvalidInput otherwise."""
    if not VERSION.fullmatch(version):  # `$` in a match() would let "2.0\n" through
        raise InvalidInput(
            f"version {version!r} must be 1 to 64 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit (like 2.1.0 or 2.1.0-rc.1)",
            errors=[{"loc": "body.version", "msg": "not a version"}],
        )
    return version


def check_file(file: str) -> str:
    """`file` if it can name a firmware file; InvalidInput otherwise."""
    allowed = EXTENSIONS[FileType.FIRMWARE]
    if not FILE_NAME.match(file) or not file.endswith(allowed):
        raise InvalidInput(
            f"file {file!r} is not a firmware file name; use letters, digits, '.', '_' or "
            f"'-' ending in {', '.join(allowed)} (like fw-2.1.0.bin)",
            errors=[{"loc": "body.file", "msg": "not a firmware file name"}],
        )
    return file


def placeholders(template: str) -> list[tuple[str, int, int]]:
    """Every `${name}` in `template` with its 1-based line and column."""
    found = []
    for number, line in enumerate(template.splitlines(), start=1):
        for match in PLACEHOLDER.finditer(line):
            found.append((match.group(1), number, match.start() + 1))
    return found


def check_template(template: str, source: str = "plan") -> None:
    """InvalidInput, located, for a placeholder other than `${version}` and `${file}`."""
    for name, line, column in placeholders(template):
        if name not in VARIABLES:
            raise InvalidInput(
                f"{source}:{line}:{column}: ${{{name}}} is not a placeholder the hook fills "
                "in; use ${version} or ${file}",
                errors=[{"loc": f"{line}:{column}", "msg": f"unknown placeholder ${{{name}}}"}],
            )


def is_template(text: str) -> bool:
    """True when the text has placeholders: a hook's plan template rather than a plan."""
    return bool(PLACEHOLDER.search(text))


def parse_template(template: str, source: str = "plan") -> Plan:
    """The plan a template makes with sample values; located InvalidInput/PlanError if none.

    A template must use `${version}` (else every delivery starts the same rollout) and no
    placeholder but `${version}` and `${file}`. A placeholder sits on one line, so the
    rendered plan's line numbers are the template's.
    """
    check_template(template, source)
    if not uses(template, "version"):
        raise InvalidInput(
            f"{source}: the hook's plan never uses ${{version}}, so every delivery would start "
            "the same rollout; put it in the name and firmware.version (name: fw-${version})",
            errors=[{"loc": "plan", "msg": "no ${version} placeholder"}],
        )
    return parse_plan(render(template, SAMPLE), source=source)


def uses(template: str, name: str) -> bool:
    """True when `template` has the placeholder `${name}`."""
    return any(found == name for found, _, _ in placeholders(template))


def render(template: str, values: Mapping[str, str]) -> str:
    """The plan text with every placeholder replaced (each one must be in `values`)."""
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)

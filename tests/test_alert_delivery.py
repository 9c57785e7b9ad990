"""The receivers example in alerts/README.md, run as it is written against a real
Alertmanager (both flavours) with the shipped routes: a page reaches a Slack-compatible
webhook, a ticket reaches an SMTP relay (STARTTLS, the password read from its file), a
scaling hint reaches a webhook, and each one's resolution follows."""

from __future__ import annotations

import email
import json
import re
import ssl
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import free_port
from .receivers import Posts
from .servers import FLAVOURS, ROOT, alertmanager

aiosmtpd = pytest.importorskip("aiosmtpd")
trustme = pytest.importorskip("trustme")
from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402

README = ROOT / "alerts/README.md"
SMTP_PASSWORD = "relay-s3cret"  # a password of the test's own relay


def readme_receivers() -> list[dict[str, Any]]:
    """The `receivers:` block of alerts/README.md, parsed."""
    text = README.read_text()
    [block] = re.findall(r"```yaml\n(receivers:\n.*?)```", text, re.S)
    receivers: list[dict[str, Any]] = yaml.safe_load(block)["receivers"]
    return receivers


class Mailbox:
    """aiosmtpd's handler: the messages accepted, and the credentials each came with."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, email.message.Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        login = session.auth_data.login.decode() if session.auth_data else ""
        self.messages.append((login, email.message_from_bytes(envelope.content)))
        return "250 OK"


def _authenticate(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    good = isinstance(auth_data, LoginPassword) and auth_data.password == SMTP_PASSWORD.encode()
    return AuthResult(success=good, auth_data=auth_data if good else None)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[Controller, Mailbox, Path]]:
    """A loopback SMTP relay that requires STARTTLS (a private CA's certificate for
    127.0.0.1) and then AUTH with SMTP_PASSWORD; yields it, its mailbox and the CA file."""
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    ca_file = tmp_path / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    mailbox = Mailbox()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=tls,
        require_starttls=True,
        authenticator=_authenticate,
        auth_require_tls=True,
        # aiosmtpd's LOGIN prompts are not the "Username:"/"Password:" that Alertmanager's
        # LOGIN expects (as real relays send); PLAIN is what relays take on port 587.
        auth_exclude_mechanism=["LOGIN"],
    )
    controller.start()
    yield controller, mailbox, ca_file
    controller.stop()


def configure(tmp_path: Path, flavour: str, posts: Posts, smtp_port: int, ca_file: Path) -> Path:
    """alertmanager.yml with the README's receivers: secrets in files under a directory
    of the test's, the example hosts pointed at loopback, the relay's private CA trusted,
    and (test only) every route's waits cut to a second. On Debian 12's Alertmanager
    (0.25), which has no url_file, the hint webhook's URL goes in `url`, as the README
    says."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "slack-webhook-url").write_text(posts.url("/slack") + "\n")
    (secrets / "hints-webhook-url").write_text(posts.url("/hints") + "\n")
    # As the README says: without a newline, which some versions would send as part of it.
    (secrets / "smtp-password").write_text(SMTP_PASSWORD)
    text = yaml.safe_dump({"receivers": readme_receivers()})
    text = text.replace("/etc/alertmanager/secrets", str(secrets))
    text = text.replace("smtp.example.com:587", f"127.0.0.1:{smtp_port}")
    receivers = yaml.safe_load(text)["receivers"]
    for receiver in receivers:
        for mail in receiver.get("email_configs", []):
            mail["tls_config"] = {"ca_file": str(ca_file)}
        for hook in receiver.get("webhook_configs", []):
            if flavour == "installed" and "url_file" in hook:
                hook["url"] = (secrets / "hints-webhook-url").read_text().strip()
                del hook["url_file"]
    config = yaml.safe_load((ROOT / "alerts/alertmanager.yml").read_text())
    config["receivers"] = receivers
    for route in [config["route"], *config["route"]["routes"]]:
        for key in ("group_wait", "group_interval"):
            if key in route or route is config["route"]:
                route[key] = "1s"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def post_alerts(url: str, alerts: list[dict[str, Any]], ended: bool = False) -> None:
    now = datetime.now(timezone.utc)
    for alert in alerts:
        alert["startsAt"] = (now - timedelta(minutes=1)).isoformat()
        alert["endsAt"] = (
            now - timedelta(seconds=1) if ended else now + timedelta(hours=1)
        ).isoformat()
    request = urllib.request.Request(
        f"{url}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


ALERTS = [
    {"labels": {"alertname": "ProbeDown", "job": "shop", "severity": "critical"},
     "annotations": {"description": "The shop answers nothing.",
                     "runbook_url": "https://example.com/runbook#probedown"}},
    {"labels": {"alertname": "ProbeSlow", "job": "shop", "severity": "warning"},
     "annotations": {"description": "The shop is slow."}},
    {"labels": {"alertname": "SightlineScaleUpRecommended", "job": "shop", "severity": "info"},
     "annotations": {"recommended_replicas": "5", "current_replicas": "2"}},
]  # fmt: skip


def wait(check: Any, timeout: float = 40) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_readme_receivers_deliver_pages_tickets_and_hints_then_their_resolution(
    tmp_path: Path, flavour: str, relay: tuple[Controller, Mailbox, Path]
) -> None:
    """Each route's alert reaches its receiver from the README example, with the secret
    read from its file: the critical one as Slack's JSON on the Slack webhook, the warning
    as an email through the relay (STARTTLS, AUTH with the file's password), the scaling
    hint as Alertmanager's webhook JSON with its replicas; resolving them sends each
    receiver the resolution."""
    controller, mailbox, ca_file = relay
    posts = Posts()
    try:
        config = configure(tmp_path, flavour, posts, controller.port, ca_file)
        with alertmanager(tmp_path, config, flavour) as url:
            post_alerts(url, [dict(a) for a in ALERTS])
            [slack] = wait(lambda: posts.at("/slack"))[:1]
            assert slack["channel"] == "#oncall"
            [attachment] = slack["attachments"]
            assert attachment["title"] == "[FIRING] ProbeDown shop"
            assert (
                "The shop answers nothing. Runbook: https://example.com/runbook#probedown"
                in (attachment["text"])
            )
            [(login, message)] = wait(lambda: mailbox.messages)[:1]
            assert login == "alertmanager@example.com"
            assert message["To"] == "team@example.com"
            assert "ProbeSlow" in message["Subject"]
            [hint] = wait(lambda: posts.at("/hints"))[:1]
            assert hint["version"] == "4"
            assert hint["receiver"] == "scaling-hints"
            [alert] = hint["alerts"]
            assert alert["annotations"]["recommended_replicas"] == "5"
            assert alert["status"] == "firing"

            post_alerts(url, [dict(a) for a in ALERTS], ended=True)
            resolved = wait(
                lambda: any(b["status"] == "resolved" for b in posts.at("/hints"))
                and any("RESOLVED" in a["title"] for b in posts.at("/slack")
                        for a in b["attachments"])
                and any("Resolved" in (m["Subject"] or "") or "RESOLVED" in (m["Subject"] or "")
                        for _, m in mailbox.messages)
            )  # fmt: skip
            assert resolved, (posts.bodies, [m["Subject"] for _, m in mailbox.messages])
    finally:
        posts.shutdown()
        posts.server_close()

"""Redaction: known carriers of secrets are masked; ports and ids are not.

The property tests plant random secrets in every carrier we claim to handle,
directly and inside ``sh -c "..."``, build the full JSON event and check the
secret appears nowhere in it.
"""
from __future__ import annotations

import base64
import json
import shlex
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from podsight.security import event_json, load_rules, redact_args, redact_text

from .helpers import ev, pod


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["mysql", "-uroot", "-phunter22", "db"], ["mysql", "-uroot", "-p***", "db"]),
        (["/usr/bin/mariadb", "--password=hunter22"], ["/usr/bin/mariadb", "--password=***"]),
        (["sshpass", "-p", "hunter22", "ssh", "h"], ["sshpass", "-p", "***", "ssh", "h"]),
        (["redis-cli", "-a", "hunter22", "ping"], ["redis-cli", "-a", "***", "ping"]),
        (["curl", "-u", "bob:hunter22", "https://x"], ["curl", "-u", "bob:***", "https://x"]),
        (["curl", "--user=bob:hunter22", "https://x"], ["curl", "--user=bob:***", "https://x"]),
        (["curl", "-H", "Authorization: Bearer abc.def-123", "u"], ["curl", "-H", "Authorization: Bearer ***", "u"]),
        (["curl", "-H", "X-Api-Key: k-123456", "u"], ["curl", "-H", "X-Api-Key: ***", "u"]),
        (["git", "clone", "https://bob:hunter22@git.example/r.git"],
         ["git", "clone", "https://bob:***@git.example/r.git"]),
        (["app", "--db-password", "hunter22", "--port", "80"], ["app", "--db-password", "***", "--port", "80"]),
        (["app", "--client-secret=s3cr3tvalue"], ["app", "--client-secret=***"]),
        (["env", "PGPASSWORD=hunter22", "psql"], ["env", "PGPASSWORD=***", "psql"]),
        (["docker", "login", "-u", "me", "-p", "hunter22"], ["docker", "login", "-u", "me", "-p", "***"]),
        (["ldapsearch", "-D", "cn=admin", "-w", "hunter22"], ["ldapsearch", "-D", "cn=admin", "-w", "***"]),
        (["smbclient", "//srv/share", "-U", "bob%hunter22"], ["smbclient", "//srv/share", "-U", "bob%***"]),
        (["htpasswd", "-bc", "/etc/htpw", "bob", "hunter22"], ["htpasswd", "-bc", "/etc/htpw", "bob", "***"]),
        (["openssl", "rsa", "-passin", "pass:hunter22"], ["openssl", "rsa", "-passin", "pass:***"]),
        (["aws", "sts", "AKIAIOSFODNN7EXAMPLE"], ["aws", "sts", "***"]),
        (["x", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"], ["x", "***"]),
        (["sh", "-c", "mysql -uroot -p'my pass' db; echo ok"], ["sh", "-c", "mysql -uroot -p'***' db; echo ok"]),
        (["sh", "-c", "export TOKEN=abc123xyz && run --token $TOKEN"],
         ["sh", "-c", "export TOKEN=*** && run --token ***"]),  # we cannot tell $TOKEN is harmless
        (["app", "--token", "hunter22", "echo", "hunter22"], ["app", "--token", "***", "echo", "***"]),
        (["app", "ghp_0123456789abcdefghijABCDEFGHIJ"], ["app", "***"]),
    ],
)
def test_known_secret_carriers(argv, expected):
    assert redact_args(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["psql", "-h", "db", "-p", "5432", "-U", "app", "shop"],      # psql -p is a port
        ["docker", "run", "-p", "8080:80", "nginx"],                  # docker run -p is a port
        ["mysql", "-P", "3306", "-p", "shop"],                        # mysql -p alone prompts
        ["git", "checkout", "3f786850e387550fdab836ed7e6dc881de23001b"],
        ["ls", "-la", "/var/lib/app"],
        ["curl", "-u", "bob", "https://example.com/a?b=c"],
        ["docker", "login", "--password-stdin", "-u", "me"],
        ["python3", "-m", "http.server", "8000"],
    ],
)
def test_innocent_arguments_survive(argv):
    assert redact_args(argv) == argv


def test_redact_text_handles_pem_and_jwt():
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"
    assert redact_text(f"echo '{pem}' > k") == "echo '***' > k"
    assert redact_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNz") == "***"  # cut by the argv bound
    assert redact_text("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig") == "Bearer ***"
    assert redact_text("") == ""


# ----------------------------------------------------------------------------
# Property tests: a planted secret never survives anywhere in the event.

_SAFE = string.ascii_letters + string.digits + "_-.!%^+~"
secret_text = st.text(alphabet=_SAFE, min_size=8, max_size=40)
url_secret = st.text(alphabet=string.ascii_letters + string.digits + "_-.~!", min_size=8, max_size=40)

CARRIERS = [
    lambda s: ["mysql", "-uroot", f"-p{s}", "shop"],
    lambda s: ["mysqldump", f"--password={s}", "db"],
    lambda s: ["sshpass", "-p", s, "ssh", "host"],
    lambda s: ["redis-cli", "-h", "r", "-a", s, "ping"],
    lambda s: ["curl", "-u", f"admin:{s}", "https://api.example.com"],
    lambda s: ["curl", "-H", f"Authorization: Bearer {s}", "https://api"],
    lambda s: ["app", "--api-key", s],
    lambda s: ["app", f"--token={s}"],
    lambda s: ["env", f"DB_PASSWORD={s}", "app"],
    lambda s: ["docker", "login", "-u", "me", "-p", s, "registry.example"],
    lambda s: ["ldapsearch", "-D", "cn=admin", "-w", s],
    lambda s: ["mongosh", "-u", "root", "-p", s],
]
URL_CARRIERS = [
    lambda s: ["git", "clone", f"https://user:{s}@git.example.com/repo.git"],
    lambda s: ["psql", f"postgresql://app:{s}@db:5432/shop"],
]

_ANY_EXEC = None


def _any_exec_rules(tmp_path_factory):
    global _ANY_EXEC
    if _ANY_EXEC is None:
        p = tmp_path_factory.mktemp("rules") / "all.yaml"
        p.write_text("rules:\n  - name: every_exec\n    event: exec\n    condition: {}\n    severity: info\n"
                     "    summary: '{process.cmdline} in {path}'\n"
                     "  - name: every_exec_generated\n    event: exec\n    condition: {}\n    severity: info\n")
        _ANY_EXEC = load_rules([p])
    return _ANY_EXEC


def _event_text(rules, argv):
    e = ev("exec", comm=argv[0][-15:], exe="/usr/bin/" + argv[0], path="/usr/bin/" + argv[0], args=argv)
    return "\n".join(event_json(r, e, pod()) for r in rules.match(e, pod()))


def _check(tmp_path_factory, argv, secret):
    rules = _any_exec_rules(tmp_path_factory)
    baseline = _event_text(rules, [a.replace(secret, "PLACEHOLDER") for a in argv])
    assume(secret not in baseline)  # the secret must not occur by chance elsewhere
    text = _event_text(rules, argv)
    assert len(text.splitlines()) == 2
    for line in text.splitlines():
        json.loads(line)
    assert secret not in text, text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=secret_text, carrier=st.sampled_from(CARRIERS), wrap=st.booleans())
def test_planted_secret_never_survives(tmp_path_factory, secret, carrier, wrap):
    argv = carrier(secret)
    if wrap:  # the same command run through a shell: one argument holds it all
        argv = ["sh", "-c", shlex.join(argv) + " && echo done"]
    _check(tmp_path_factory, argv, secret)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=url_secret, carrier=st.sampled_from(URL_CARRIERS), wrap=st.booleans())
def test_planted_url_password_never_survives(tmp_path_factory, secret, carrier, wrap):
    argv = carrier(secret)
    if wrap:
        argv = ["sh", "-c", shlex.join(argv)]
    _check(tmp_path_factory, argv, secret)


_B64 = string.ascii_letters + string.digits + "+/"


@st.composite
def shaped_secret(draw):
    kind = draw(st.sampled_from(["akia", "aws_secret", "jwt", "github"]))
    if kind == "akia":
        return "AKIA" + draw(st.text(alphabet=string.ascii_uppercase + string.digits, min_size=16, max_size=16))
    if kind == "aws_secret":
        body = draw(st.text(alphabet=_B64, min_size=37, max_size=37))
        return body + "aZ9"  # AWS secrets mix cases and digits
    if kind == "github":
        return "ghp_" + draw(st.text(alphabet=string.ascii_letters + string.digits, min_size=36, max_size=36))
    claims = draw(st.dictionaries(st.sampled_from(["sub", "iss", "aud", "exp"]), st.text(min_size=1, max_size=20),
                                  min_size=1))
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    sig = draw(st.binary(min_size=16, max_size=64))
    header = enc(b'{"alg":"RS256"}')
    return f"{header}.{enc(json.dumps(claims).encode())}.{enc(sig)}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=shaped_secret(), position=st.sampled_from(["alone", "assigned", "in_shell", "header"]))
def test_planted_token_by_shape_never_survives(tmp_path_factory, secret, position):
    argv = {
        "alone": ["aws", "configure", "set", "x", secret],
        "assigned": ["env", f"SOME_VALUE={secret}", "app"],
        "in_shell": ["sh", "-c", f"curl -s https://api.example.com/?q={secret} | jq ."],
        "header": ["wget", f"--header=X-Custom: {secret}", "https://x"],
    }[position]
    _check(tmp_path_factory, argv, secret)

"""Hide secrets in command lines before they leave the agent.  Pure; no I/O.

Two passes, because a secret is recognised either by *where* it sits or by
*what* it looks like:

1. Structure: options that carry secrets (``--password=x``, ``--token x``,
   ``-pSECRET`` for the MySQL family, ``sshpass -p``, ``redis-cli -a``,
   ``curl -u user:pass``, ``docker login -p``, ``ldapsearch -w`` ...).  A
   short option means a password only for the tools listed here: ``psql -p``
   and ``docker run -p`` are ports.  Arguments that are command lines
   themselves (``sh -c "mysql -psecret"``) are split and scanned the same way.
2. Shape: bearer tokens and Authorization headers, JWTs, AWS access key ids
   and secret keys, well-known token prefixes, private-key blocks, URLs with
   ``user:pass@``, ``NAME=value`` where NAME looks like a credential.

A secret found once is hidden everywhere it appears in the command line.
We prefer hiding too much (a database name after ``mysql -p``) to too little.
"""
from __future__ import annotations

import re
import shlex
from typing import Sequence

__all__ = ["MASK", "redact_args", "redact_text"]

MASK = "***"

_MYSQL = {
    "mysql", "mysqladmin", "mysqldump", "mysqlimport", "mysqlcheck", "mysqlshow", "mysqlpump",
    "mysqlslap", "mysqlsh", "mariadb", "mariadb-admin", "mariadb-dump", "mariadb-import",
    "mariadb-check", "mariadb-show", "mariadb-slap",
}
_MONGO = {"mongo", "mongosh", "mongodump", "mongorestore", "mongoexport", "mongoimport", "mongostat", "mongotop"}
_LDAP = {"ldapsearch", "ldapadd", "ldapmodify", "ldapdelete", "ldappasswd", "ldapwhoami", "ldapcompare", "ldapmodrdn"}
_REGISTRY_LOGIN = {"docker", "podman", "nerdctl", "buildah", "skopeo", "helm", "oras", "crane"}

# tool → {short option: (kind, value may be the next argument)}
# kind: "value" = the whole value is secret; "userpass" = the part after ':';
# "smb" = the part after '%'.
_SHORT: dict[str, dict[str, tuple[str, bool]]] = {}
for _t in _MYSQL:
    _SHORT[_t] = {"-p": ("value", False)}  # mysql -p <x>: prompts, <x> is the database
for _t in _MONGO:
    _SHORT[_t] = {"-p": ("value", True)}
for _t in _LDAP:
    _SHORT[_t] = {"-w": ("value", True)}
_SHORT.update({
    "sshpass": {"-p": ("value", True)},
    "redis-cli": {"-a": ("value", True)},
    "valkey-cli": {"-a": ("value", True)},
    "curl": {"-u": ("userpass", True), "-U": ("userpass", True)},
    "smbclient": {"-U": ("smb", True)},
    "sqlcmd": {"-P": ("value", True)},
    "bcp": {"-P": ("value", True)},
    "mc": {},
})
_LOGIN_SHORT = {"-p": ("value", True)}  # only after a "login" subcommand
_TOOLS = set(_SHORT) | _REGISTRY_LOGIN | {"htpasswd"}

# Long options whose value is a secret, judged by the name's last words.
_SENSITIVE_OPT = re.compile(
    r"(?:^|[-_])(?:password|passwd|pass|pwd|passphrase|secret|token|apikey|api[-_]key|"
    r"access[-_]key|secret[-_]key|private[-_]key|credentials?|bearer)$",
    re.I,
)
_USERPASS_OPT = {"user", "proxy-user"}  # curl --user user:pass

# (pattern, replacement, trigger): the pattern only runs when the lower-cased
# text contains the trigger, which keeps redaction cheap for ordinary argv.
_PATTERNS: list[tuple[re.Pattern[str], str, str | tuple[str, ...]]] = [
    # PEM private keys, possibly cut short by the argv bound
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S),
     MASK, "private key"),
    # JWT / JWS: base64url header starting {"  . payload . signature
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.?[A-Za-z0-9_-]*"), MASK, "eyj"),
    # Authorization: Bearer xyz / Basic xyz / token xyz
    (re.compile(r"(?i)(\b(?:proxy-)?authorization\s*[:=]\s*(?:(?:bearer|basic|token|digest|negotiate)\s+)?)"
                r"[^\s'\"]+"), r"\1" + MASK, "authorization"),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1" + MASK, "bearer"),
    (re.compile(r"(?i)(\b(?:x-api-key|api-key|x-auth-token|private-token|x-vault-token|cookie|set-cookie)"
                r"\s*:\s*)[^\r\n'\"]+"), r"\1" + MASK, ":"),
    # scheme://user:pass@host (greedy: an unescaped @ inside the password)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@'\"]*):[^/\s'\"]+@"), r"\1:" + MASK + "@", "@"),
    # scheme://TOKEN@host (tokens used as the user name)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[A-Za-z0-9_-]{20,}@"), r"\1" + MASK + "@", "@"),
    # AWS access key ids
    (re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"), MASK,
     ("akia", "asia", "abia", "acca", "agpa", "aida", "aroa", "anpa", "anva", "aipa")),
    # well-known token formats: GitHub, GitLab, Slack, Stripe/OpenAI style, Google API keys
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,}|"
                r"xox[abposr]-[A-Za-z0-9-]{10,}|sk_(?:live|test)_[A-Za-z0-9]{10,}|sk-[A-Za-z0-9_-]{20,}|"
                r"AIza[0-9A-Za-z_-]{35})"), MASK, ("_", "-")),
    # openssl -passin pass:xyz
    (re.compile(r"(?i)(\bpass:)\S+"), r"\1" + MASK, "pass:"),
    # NAME=value / "name": "value" where NAME looks like a credential
    (re.compile(r"(?i)((?<![A-Za-z0-9])[A-Za-z0-9_.-]*(?:pass|pwd|secret|token|api[_-]?key|access[_-]?key|"
                r"private[_-]?key|credential)[A-Za-z0-9_.-]*[\"']?\s*[=:]\s*)"
                r"(?!\*\*\*)(?:\"[^\"]*\"|'[^']*'|[^\s&;,'\"]+)"), r"\1" + MASK, ("=", ":")),
]

# 40 characters of base64 with mixed case and digits: AWS secret access keys.
# (Hex digests such as git commit ids are lower-case only and survive.)
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])")


def _aws_secret(m: re.Match[str]) -> str:
    s = m.group(0)
    if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s):
        return MASK
    return s


def redact_text(text: str) -> str:
    """Hide secrets recognisable by their shape anywhere in ``text``."""
    if not text:
        return text
    lower = text.lower()
    for pattern, repl, trigger in _PATTERNS:
        if (trigger in lower) if isinstance(trigger, str) else any(t in lower for t in trigger):
            text = pattern.sub(repl, text)
    if len(text) >= 40:
        text = _AWS_SECRET.sub(_aws_secret, text)
    return text


def _secret_part(kind: str, value: str) -> str:
    if kind == "userpass":
        return value.partition(":")[2]
    if kind == "smb":
        return value.partition("%")[2]
    return value


def _basename(token: str) -> str:
    return token.rsplit("/", 1)[-1]


def _scan(tokens: list[str]) -> tuple[list[str], set[str]]:
    """Redact option values in one tokenized command line; return the secrets."""
    out = list(tokens)
    secrets: set[str] = set()
    tool = ""
    login = "login" in tokens
    pending: str | None = None  # kind of secret expected in the next token

    def hide(i: int, prefix: str, secret: str) -> None:
        if secret:
            secrets.add(secret)
            out[i] = prefix + MASK

    for i, tok in enumerate(tokens):
        if pending is not None:
            part = _secret_part(pending, tok)
            hide(i, tok[: len(tok) - len(part)], part)
            pending = None
            continue
        base = _basename(tok)
        if base in _TOOLS:
            tool = base
            continue
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            kind = None
            if _SENSITIVE_OPT.search(name):
                kind = "value"
            elif name.lower() in _USERPASS_OPT and tool == "curl":
                kind = "userpass"
            if kind is None:
                continue
            if eq:
                part = _secret_part(kind, value)
                hide(i, tok[: len(tok) - len(part)], part)
            elif not name.lower().endswith(("-stdin", "-file")):
                pending = kind
        elif tok.startswith("-") and len(tok) >= 2:
            opts = _SHORT.get(tool, {})
            if tool in _REGISTRY_LOGIN and login:
                opts = _LOGIN_SHORT
            spec = opts.get(tok[:2])
            if spec is None:
                continue
            kind, separate = spec
            if len(tok) > 2:
                part = _secret_part(kind, tok[2:])
                hide(i, tok[: len(tok) - len(part)], part)
            elif separate:
                pending = kind
    if tool == "htpasswd" and len(tokens) >= 3 and any(
        t.startswith("-") and not t.startswith("--") and "b" in t for t in tokens
    ):
        hide(len(tokens) - 1, "", tokens[-1])  # htpasswd -b file user PASSWORD
    return out, secrets


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # unbalanced quotes: argv was cut by the kernel's bound
        return text.split()


def redact_args(argv: Sequence[str]) -> list[str]:
    """argv with every secret replaced by ``***``."""
    out, secrets = _scan(list(argv))
    for i, arg in enumerate(out):
        if any(c.isspace() for c in arg):
            _sub, inner = _scan(_split(arg))
            for secret in sorted(inner, key=len, reverse=True):
                arg = arg.replace(secret, MASK)
            secrets |= inner
        out[i] = redact_text(arg)
    # The same secret elsewhere (echo "$PASS", a retry) is hidden too; very
    # short values are left alone there so a password "1" does not blank out
    # every digit.
    repeated = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)
    if repeated:
        for i, arg in enumerate(out):
            for secret in repeated:
                if secret in arg:
                    arg = arg.replace(secret, MASK)
            out[i] = arg
    return out

"""Where an API key may go, and what of a URL may be stored: OPENAI_API_KEY only to the OpenAI API; another server
only a key variable named for it (``*_KEY``, not a secret of another kind, or ``MULCOT_*``); a base URL without its
``user:password@`` and secret query parameters when stored or shown (see the README's "Which key goes where")."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
OPENAI_HOST = "api.openai.com"
# What a key variable named for a server other than OpenAI's must be called: an API key (``*_KEY``: VLLM_API_KEY,
# MY_TEACHER_KEY) or one made for mulcot (``MULCOT_*``), and not a secret of another kind (``*SECRET*``,
# ``*PRIVATE*``, ``*ACCESS*``, ...), so that no recipe or typo sends a token made for something else (GITHUB_TOKEN,
# AWS_SECRET_ACCESS_KEY, SSH_PRIVATE_KEY) to a stranger's server
KEY_ENV_PATTERN = re.compile(r"^(MULCOT_[A-Z0-9_]+|[A-Z0-9_]+_KEY)$", re.IGNORECASE)
_NOT_AN_API_KEY = re.compile(r"SECRET|PRIVATE|PASSW|ACCESS|SESSION|SSH|GPG|SIGNING", re.IGNORECASE)
# query parameters that carry secrets (?api-key=, ?access_token=, ?sig=): never stored, never echoed
_SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|auth|sig|credential|session", re.IGNORECASE)


def is_openai(base_url: str | None) -> bool:
    """Whether ``base_url`` is the OpenAI API (no base URL, or https://api.openai.com/...)."""
    if not base_url:
        return True
    parts = urlsplit(base_url)
    return parts.scheme == "https" and (parts.hostname or "").lower() == OPENAI_HOST


def url_secrets(url: str) -> list[str]:
    """What in ``url`` is a credential: ``user:password@`` and query parameters such as ``api-key`` (empty when
    none)."""
    parts = urlsplit(url)
    found = ["credentials (user:password@)"] if parts.username or parts.password else []
    found += [f"a '{name}' query parameter" for name, _ in parse_qsl(parts.query, keep_blank_values=True)
              if _SECRET_PARAM.search(name)]
    return found


def public_url(url: str | None) -> str | None:
    """``url`` as it may be stored or shown: without ``user:password@``, secret query parameters (``?api-key=``)
    left out, other parameters (``?api-version=``) kept."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # not a URL (a bad port): keep nothing that could be a credential
        return url.split("?")[0].split("@")[-1]
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port:
        host += f":{port}"
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _SECRET_PARAM.search(k)]
    query = urlencode(kept)
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def key_env_problem(key_env: str, base_url: str | None) -> str | None:
    """Why the key in ``$key_env`` must not be sent to ``base_url`` (None when it may): OPENAI_API_KEY goes only to
    the OpenAI API; another server gets a variable named ``*_KEY`` (not ``*SECRET*``, ``*PRIVATE*``, ...) or
    ``MULCOT_*`` only."""
    if is_openai(base_url):
        return None
    host = urlsplit(base_url or "").hostname or base_url
    if key_env.upper() == DEFAULT_KEY_ENV:
        return (f"{DEFAULT_KEY_ENV} goes only to the OpenAI API ({OPENAI_HOST}), not to {host}: put that server's "
                "key in a variable of its own (e.g. MULCOT_TEACHER_KEY) and name it with --api-key-env "
                "(api_key_env in a recipe)")
    mulcot_own = key_env.upper().startswith("MULCOT_")
    if not KEY_ENV_PATTERN.match(key_env) or (not mulcot_own and _NOT_AN_API_KEY.search(key_env)):
        return (f"{key_env} is not sent to {host}: only a variable named like an API key (*_KEY, not a secret of "
                "another kind) or MULCOT_* carries a key to a server, so no other token leaves by mistake; if "
                f"{host} should get it, copy it into MULCOT_TEACHER_KEY and name that")
    return None

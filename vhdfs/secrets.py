"""Keep secrets out of everything vhdfs prints, logs or stores: one scrubber for all of it.

Secrets are SAS signatures and whole SAS query strings, account keys, bearer tokens and
shared-key authorization headers. Every text that may carry one goes through `scrub` before
it leaves the process:
  - the command line's standard output and error (`ScrubbingWriter`, installed by `vhdfs.cli`:
    error lines, warnings, listings, --json, the mount and upload messages);
  - every record of the "vhdfs" logger (`ScrubbingFilter`: the warnings on the terminal and
    the mount daemon's log file or syslog);
  - what vhdfs stores: blob metadata that names a source blob keeps `without_query(url)`, and
    the mount's extended attributes are scrubbed.

What `scrub` removes:
  - the query string of any http(s):// or az:// URL (a SAS, or any other parameter a user
    may have put there): a blob is shown and stored by its URL without the query;
  - `sig=`/`signature=` values, `AccountKey=` and `SharedAccessSignature=` values of
    connection strings, `SharedKey ACCOUNT:signature` and `Bearer token` headers, and the
    signature Azure echoes in some 403 answers;
  - every value registered with `register`: the credentials module registers the key and SAS
    it loads from the environment, and parsing a SAS URL registers its signature and query,
    so they are masked also where they appear outside a URL (an SDK message quoting a request
    path, a percent-encoded copy).

This module is the bottom layer: it imports nothing of vhdfs, so every layer may use it.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from typing import Any, TextIO

REDACTED = "REDACTED"
# Shorter values are not registered: replacing every "2024" or "rcw" in the output would
# garble it, and a key or signature is far longer.
MIN_SECRET_LENGTH = 8
# SAS query fields that say what the token allows, never the secret itself.
SAS_PUBLIC_FIELDS = frozenset({"sv", "ss", "srt", "sp", "se", "st", "spr", "sr", "sip", "si",
                               "sdd", "skoid", "sktid", "skt", "ske", "sks", "skv", "rscc",
                               "rscd", "rsce", "rscl", "rsct", "comp", "restype", "snapshot",
                               "versionid", "timeout"})

# A URL's query: from "?" up to white space, quotes or brackets; trailing sentence
# punctuation ("...blob?sig=x: not found") stays outside.
_URL_QUERY = re.compile(r"(?i)\b((?:https?|az)://[^\s?#'\"<>()]+)\?"
                        r"(?:[^\s'\"<>()]*[^\s'\"<>().,;:!?])?")
_SAS_SECRET = re.compile(r"(?i)\b(sig|signature)=[^&\s'\"<>]+")
_KEY_IN_TEXT = re.compile(r"(?i)\b(AccountKey|SharedAccessSignature)=[^;\s'\"<>]+")
_SHAREDKEY_HEADER = re.compile(r"(?i)\b(SharedKey(?:Lite)?\s+[^:\s]+:)[A-Za-z0-9+/=]+")
_BEARER = re.compile(r"(?i)\b(Bearer\s+)[A-Za-z0-9._~+/=-]+")
# Azure echoes the request's signature in some 403 answers ("The MAC signature found in the
# HTTP request '...' is not the same as any computed signature").
_ECHOED_SIGNATURE = re.compile(r"(?i)(signature found in the HTTP request ')[^']*(')")

_lock = threading.Lock()
_registered: tuple[str, ...] = ()  # longest first, so a secret's parts never shadow it


def _forms(value: str) -> set[str]:
    """A secret as it may appear in text: as given, percent-encoded and percent-decoded."""
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote(value, safe="=&"),
             urllib.parse.unquote(value)}
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def register(*values: str) -> None:
    """Mask `values` (keys, signatures, tokens) wherever they appear in scrubbed text."""
    global _registered
    new = set().union(*(_forms(v) for v in values if v)) if values else set()
    with _lock:
        if new - set(_registered):
            _registered = tuple(sorted(set(_registered) | new, key=len, reverse=True))


def register_query(query: str) -> None:
    """Mask the query string of a URL the user gave: all of it, its signature, and the value
    of every field that is not one of the SAS's public fields (a token of some other kind)."""
    query = query.lstrip("?")
    if not query:
        return
    values = [query]
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name.lower() not in SAS_PUBLIC_FIELDS:
            values.append(value)
    register(*values)


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without URL query strings, SAS signatures, account keys, bearer tokens, any
    registered secret, or any of `secrets`."""
    if not text:
        return text
    extra = sorted((f for s in secrets if s for f in _forms(s)), key=len, reverse=True)
    for secret in (*extra, *_registered):
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _URL_QUERY.sub(lambda m: m.group(1), text)
    text = _SAS_SECRET.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _KEY_IN_TEXT.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _SHAREDKEY_HEADER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _ECHOED_SIGNATURE.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)


def without_query(url: str) -> str:
    """A URL as it may be shown or stored: without its query string (a SAS) or fragment."""
    return url.split("?", 1)[0].split("#", 1)[0]


class ScrubbingWriter:
    """A text stream that scrubs what passes through it, a line at a time (a secret split
    over several `write` calls of one line is still found). Everything but `write` and
    `flush` is the wrapped stream's own: `buffer` (binary output such as `vhdfs cat` is data,
    not text, and is not touched), `isatty`, `fileno`, `encoding`."""

    def __init__(self, stream: TextIO) -> None:
        self.wrapped = stream
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        cut = max(self._pending.rfind("\n"), self._pending.rfind("\r")) + 1
        if cut:
            done, self._pending = self._pending[:cut], self._pending[cut:]
            self.wrapped.write(scrub(done))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            done, self._pending = self._pending, ""
            self.wrapped.write(scrub(done))
        self.wrapped.flush()

    def __getattr__(self, name: str) -> Any:
        # The rest of the text stream's interface (isatty, fileno, encoding ...) is the
        # wrapped stream's own: a proxy, not a probe.
        return getattr(self.wrapped, name)


_TRACE_FORMATTER = logging.Formatter()


class ScrubbingFilter(logging.Filter):
    """Scrubs every record of the logger it is added to, before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        if record.exc_info and not record.exc_text:  # a trace may quote a URL with its SAS
            record.exc_text = scrub(_TRACE_FORMATTER.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def scrub_logger(logger: logging.Logger) -> None:
    """Scrub every record of `logger` (once, however often it is called)."""
    if not any(isinstance(f, ScrubbingFilter) for f in logger.filters):
        logger.addFilter(ScrubbingFilter())

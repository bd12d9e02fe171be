"""The two text guards every printed line passes: vhdfs.secrets (no secret leaves the
process) and vhdfs.quoting (no control character of a name reaches a terminal)."""

from __future__ import annotations

import io
import logging
import os
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from vhdfs.cli import main
from vhdfs.quoting import escape
from vhdfs.secrets import REDACTED, ScrubbingFilter, ScrubbingWriter, register, scrub

SAS = "sv=2024-05-04&sr=c&sp=rl&sig=AbCdEfGhIjKlMnOp%2BqRsT%3D&marker=MARKERVALUE123"


def test_urls_lose_their_query_and_keep_the_sentence() -> None:
    url = f"https://acct.blob.core.windows.net/c/d.vhd?{SAS}"
    assert scrub(f"{url}: not found") == "https://acct.blob.core.windows.net/c/d.vhd: not found"
    assert scrub(f"({url})") == "(https://acct.blob.core.windows.net/c/d.vhd)"
    assert scrub(f'"source": "{url}"') == '"source": "https://acct.blob.core.windows.net/c/d.vhd"'
    assert scrub("az://c/d.vhd?x=secretsecret.") == "az://c/d.vhd."
    assert scrub("see https://example.org/page.") == "see https://example.org/page."


def test_registered_values_are_masked_anywhere() -> None:
    register("Zm9yLXRoZS10ZXN0LW9mLXJlZ2lzdGVyZWQta2V5")
    assert scrub("key Zm9yLXRoZS10ZXN0LW9mLXJlZ2lzdGVyZWQta2V5 x") == f"key {REDACTED} x"
    register("a+b/c=d-secret")
    assert scrub("quoted a%2Bb%2Fc%3Dd-secret") == f"quoted {REDACTED}"
    register("short")  # too short to mask everywhere
    assert scrub("a short line") == "a short line"


def test_secrets_outside_urls() -> None:
    text = ("url: /devstoreaccount1/c/d.vhd?sv=1&sig=AbC%2Bd%3D; AccountKey=a2V5a2V5a2V5; "
            "SharedAccessSignature=sv=1&sig=zzz; Authorization: SharedKey acct:Zm9vYmFy; "
            "Bearer eyJ0eXAi.abc.def")
    clean = scrub(text)
    for secret in ("AbC%2Bd%3D", "a2V5a2V5a2V5", "sig=zzz", "Zm9vYmFy", "eyJ0eXAi"):
        assert secret not in clean


def test_the_writer_scrubs_lines_split_over_writes() -> None:
    out = io.StringIO()
    writer = ScrubbingWriter(out)  # type: ignore[arg-type]
    url = f"http://127.0.0.1:10000/devstoreaccount1/c/d.vhd?{SAS}"
    for piece in (url[:30], url[30:70], url[70:], ": gone\nnext ", "line"):
        writer.write(piece)
    assert "sig=" not in out.getvalue() and out.getvalue().endswith(": gone\n")
    writer.flush()
    assert out.getvalue() == "http://127.0.0.1:10000/devstoreaccount1/c/d.vhd: gone\nnext line"


def test_log_records_and_their_traces_are_scrubbed() -> None:
    logger = logging.getLogger("vhdfs.test.scrub")
    logger.propagate = False
    logger.addFilter(ScrubbingFilter())
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        url = f"https://a.blob.core.windows.net/c/d?{SAS}"
        logger.warning("%s failed", url)
        try:
            raise OSError(f"connection to {url} refused")
        except OSError:
            logger.exception("trace")
    finally:
        logger.removeHandler(handler)
    assert "MARKERVALUE123" not in stream.getvalue() and "sig=" not in stream.getvalue()
    assert "https://a.blob.core.windows.net/c/d failed" in stream.getvalue()
    assert "OSError: connection to https://a.blob.core.windows.net/c/d refused" in \
        stream.getvalue()


def test_error_lines_of_the_command_are_scrubbed(capsys) -> None:
    """A message composed with the URL as typed (upload --as-is of a blob is refused before
    any request) reaches standard error without its query."""
    url = f"http://127.0.0.1:9/devstoreaccount1/c/x.vhd?{SAS}"
    code = main(["upload", url, "http://127.0.0.1:9/devstoreaccount1/c/y.vhd", "--as-is"])
    out, err = capsys.readouterr()
    assert code == 2 and err == ("vhdfs: error: http://127.0.0.1:9/devstoreaccount1/c/x.vhd: "
                                 "--as-is uploads a local file; this is a blob\n")


def test_escape_as_ls_b() -> None:
    cases = {
        "plain name.txt": "plain name.txt",
        "a\nb": "a\\nb",
        "tab\there": "tab\\there",
        "esc\x1b[31mred": "esc\\033[31mred",
        "del\x7f": "del\\177",
        "c1\x85": "c1\\302\\205",
        os.fsdecode(b"caf\xe9"): "caf\\351",
        "back\\slash": "back\\\\slash",
        "bidi\u202eevil": "bidi\\342\\200\\256evil",
        "caf\u00e9 \u65e5\u672c": "caf\u00e9 \u65e5\u672c",
    }
    for name, shown in cases.items():
        assert escape(name) == shown, name
    assert escape("C:\\Windows\x1b", backslash=False) == "C:\\Windows\\033"


def _unescape(text: str) -> bytes:
    """What `escape` output reads back to (the C escapes and octal bytes of ls -b)."""
    named = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, "\\": 92}
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] != "\\":
            out += text[i].encode("utf-8")
            i += 1
        elif text[i + 1] in named:
            out.append(named[text[i + 1]])
            i += 2
        else:
            out.append(int(text[i + 1:i + 4], 8))
            i += 4
    return bytes(out)


@given(st.binary(max_size=64))
def test_escaped_names_are_one_printable_line_that_reads_back(raw: bytes) -> None:
    shown = escape(os.fsdecode(raw))
    assert "\n" not in shown and "\x1b" not in shown
    assert not any(unicodedata.category(c) in ("Cc", "Cs", "Cn", "Zl", "Zp") for c in shown)
    assert _unescape(shown) == raw

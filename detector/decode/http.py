"""HTTP/1.x request-head decoder: method, target, Host, User-Agent and proxy CONNECT.

References:
    RFC 9112 §2.2 (line endings: a bare LF is accepted), §3 (request line:
        method SP request-target SP HTTP-version), §3.2 (request-target forms;
        more than one Host is a 400), §3.2.2 (absolute-form: the target's host
        wins over Host), §3.2.3 (authority-form for CONNECT), §5 (field lines)
    RFC 9110 §7.2 (Host = uri-host [ ":" port ]), §9 (methods), RFC 5789 (PATCH),
        RFC 4918 §9 (WebDAV methods)
    RFC 3986 §3.2.2 (host: IP-literal in brackets, IPv4, reg-name characters)
"""

from __future__ import annotations

from detector.decode._reader import DecodeError
from detector.model import MAX_HTTP_HEAD_LEN, Anomaly, HttpRequest, NeedMore

_METHODS = frozenset(
    (
        b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
        b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK",
    )
)  # fmt: skip
MAX_METHOD_LEN = max(map(len, _METHODS))
# First bytes of a known method: the one test most TCP flows (TLS, SSH, ...) fail.
_METHOD_FIRST = frozenset(m[0] for m in _METHODS)
# User-Agent strings are ~100-300 characters; longer ones are padding or abuse, and
# the value is stored per flow.
MAX_USER_AGENT_LEN = 512

ANOMALIES: dict[str, str] = {
    "http.head_too_long": f"no end of the request head within {MAX_HTTP_HEAD_LEN} bytes",
    "http.bad_request_line": "the request line has no target or no version after it",
    "http.bad_version": "the request line's version is not HTTP/1.0 or HTTP/1.1",
    "http.duplicate_host": "more than one Host header (RFC 9112 §3.2: a 400)",
    "http.bad_host": "a Host value or URL authority that is no valid host[:port]",
    "http.bad_connect_target": "a CONNECT target that is not host:port",
}

HEAD_TOO_LONG = Anomaly("http.head_too_long")
BAD_REQUEST_LINE = Anomaly("http.bad_request_line")
BAD_VERSION = Anomaly("http.bad_version")
DUPLICATE_HOST = Anomaly("http.duplicate_host")
BAD_HOST = Anomaly("http.bad_host")
BAD_CONNECT_TARGET = Anomaly("http.bad_connect_target")

_NEED_MORE = NeedMore(0)  # the head's length is unknown until its end is seen
_REG_NAME = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%")
_IP_LITERAL = frozenset(b"0123456789abcdef:.")
_DIGITS = frozenset(b"0123456789")
_SCHEMES = (b"http://", b"https://")


def parse_http_request(stream: bytes) -> HttpRequest | NeedMore | Anomaly | None:
    """Decode the HTTP/1.x request head at the start of a client→server TCP stream.

    Rejects non-HTTP on the first bytes (None). NeedMore until the empty line that
    ends the head. `host` is the absolute-form target's host, else the Host header,
    else None; for CONNECT it is the target's host and `connect_port` its port.
    """
    if not stream or stream[0] not in _METHOD_FIRST:
        return None
    space = stream.find(b" ", 0, MAX_METHOD_LEN + 1)
    if space < 0:
        if len(stream) <= MAX_METHOD_LEN and any(m.startswith(stream) for m in _METHODS):
            return _NEED_MORE
        return None
    if stream[:space] not in _METHODS:
        return None
    try:
        return _parse_head(stream)
    except DecodeError as err:
        return err.anomaly


def _parse_head(stream: bytes) -> HttpRequest | NeedMore:
    line_end = stream.find(b"\n", 0, MAX_HTTP_HEAD_LEN)
    if line_end < 0:
        if len(stream) > MAX_HTTP_HEAD_LEN:
            raise DecodeError(HEAD_TOO_LONG)
        return _NEED_MORE
    method, target = _request_line(stream[:line_end])  # judged as soon as it is whole
    end = _head_end(stream)
    if end < 0:
        if len(stream) > MAX_HTTP_HEAD_LEN:
            raise DecodeError(HEAD_TOO_LONG)
        return _NEED_MORE
    if end > MAX_HTTP_HEAD_LEN:
        raise DecodeError(HEAD_TOO_LONG)
    host_value, user_agent = _fields(stream[line_end + 1 : end])
    connect_port = 0
    if method == b"CONNECT":
        host, port = _authority(target, BAD_CONNECT_TARGET)
        if host is None or port is None:
            raise DecodeError(BAD_CONNECT_TARGET)
        connect_port = port
    else:
        host = _url_host(target)
        if host is None and host_value is not None:
            host = _authority(host_value, BAD_HOST)[0]
    return HttpRequest(
        method=method.decode("ascii"),
        host=host,
        target=target.decode("ascii", "backslashreplace"),
        user_agent=user_agent,
        connect_port=connect_port,
    )


def _head_end(stream: bytes) -> int:
    """Offset just past the empty line that ends the head, or -1 if not yet seen."""
    ends = [i for i in (stream.find(b"\n\r\n"), stream.find(b"\n\n")) if i >= 0]
    if not ends:
        return -1
    at = min(ends)
    return at + (3 if stream[at + 1] == 0x0D else 2)


def _request_line(line: bytes) -> tuple[bytes, bytes]:
    """(method, target) of a request line; the method is known to be valid already.

    The target is everything between the first and the last space: real clients
    (and attack tools) send unencoded spaces in it, and servers take them.
    """
    method, _, rest = line.rstrip(b"\r").partition(b" ")
    target, space, version = rest.rpartition(b" ")
    target = target.strip(b" ")
    if not space or not target:
        raise DecodeError(BAD_REQUEST_LINE)
    if len(version) != 8 or not version.startswith(b"HTTP/1.") or version[7] not in b"01":
        raise DecodeError(BAD_VERSION)
    return method, target


def _fields(block: bytes) -> tuple[bytes | None, str | None]:
    """The Host value and the User-Agent text from the field lines."""
    host: bytes | None = None
    user_agent: str | None = None
    for line in block.split(b"\n"):
        colon = line.find(b":")
        if colon <= 0 or line[0] in b" \t":  # not a field line, or an obsolete fold
            continue
        name = line[:colon].lower()
        if name == b"host":
            if host is not None:
                raise DecodeError(DUPLICATE_HOST)
            host = line[colon + 1 :].strip(b" \t\r")
        elif name == b"user-agent" and user_agent is None:
            value = line[colon + 1 :].strip(b" \t\r")
            user_agent = value.decode("utf-8", "backslashreplace")[:MAX_USER_AGENT_LEN]
    return host, user_agent


def _url_host(target: bytes) -> str | None:
    """The host of an absolute-form target (`http://user@host:port/path`), else None."""
    lower = target[:8].lower()
    for scheme in _SCHEMES:
        if lower.startswith(scheme):
            rest = target[len(scheme) :]
            cut = min((i for i in (rest.find(b"/"), rest.find(b"?"), rest.find(b"#")) if i >= 0), default=len(rest))
            return _authority(rest[:cut].rpartition(b"@")[2], BAD_HOST)[0]
    return None


def _authority(value: bytes, error: Anomaly) -> tuple[str | None, int | None]:
    """(host, port) of `host[:port]` or `[v6]:port`; host lower-cased, brackets and trailing dot dropped.

    An empty host gives None; a missing port gives None. Anything that is not a
    host raises DecodeError(error).
    """
    if value.startswith(b"["):
        close = value.find(b"]")
        if close < 0:
            raise DecodeError(error)
        host, rest = value[1:close].lower(), value[close + 1 :]
        if not host or not _IP_LITERAL.issuperset(host) or (rest and rest[:1] != b":"):
            raise DecodeError(error)
        port_text = rest[1:]
    else:
        host, colon, port_text = value.lower().rpartition(b":")
        if not colon:
            host, port_text = port_text, b""
        if host.endswith(b"."):
            host = host[:-1]
        if not _REG_NAME.issuperset(host):
            raise DecodeError(error)
    port = None
    if port_text:
        if len(port_text) > 5 or not _DIGITS.issuperset(port_text) or not 0 < int(port_text) < 65536:
            raise DecodeError(error)
        port = int(port_text)
    return (host.decode("ascii") or None), port

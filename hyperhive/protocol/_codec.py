"""The one strict codec between JSON lines and the attrs classes of ``_messages``.

Strict means: no coercion (``"5"`` is not an int, ``1`` is not a bool), no unknown fields,
every required field present, every value within the :class:`~hyperhive.protocol._bounds.Bounds`
its field declares. Errors come out as :class:`ProtocolError` with a reason a person can act on.

A request line is untrusted input: before the JSON parser sees it, cheap scans on the bytes
bound its nesting depth and the length of its number literals, so neither recursion nor a
huge integer conversion can be provoked; duplicate keys, ``NaN``/``Infinity`` and lone
surrogates are refused too. Whatever a line holds, :meth:`RequestTable.decode` returns a
request or raises :class:`ProtocolError`.

Two parsers, one behaviour: ``orjson`` parses the common line, and any line it might read
differently from the standard library (a ``\\u`` escape, a run of 19 or more digits, deep
brackets, a duplicate key, or anything ``orjson`` refuses) is parsed again by ``json``, whose
hooks give every refusal its reason. Replies are written by ``orjson`` too, by ``json`` when
``orjson`` refuses a value (a lone surrogate, an integer beyond 64 bits).
"""

from __future__ import annotations

import json
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from itertools import accumulate
from typing import Any, Final, Literal, TypeVar, get_args, get_origin

import attrs
import cattrs
import orjson
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from hyperhive.config import MAX_JSON_DEPTH, MAX_JSON_NUMBER_CHARS, MAX_LINE_BYTES
from hyperhive.errors import ProtocolError
from hyperhive.protocol._bounds import bounds_of
from hyperhive.protocol._messages import (
    AGENT_REQUESTS,
    HOST_REQUESTS,
    MANAGER_REQUESTS,
    Reply,
    Request,
)

T = TypeVar("T")


def _wire_name(field_name: str) -> str:
    return field_name.rstrip("_")


#: Every integer must fit sqlite's signed 64 bits, whether or not its field declares bounds.
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


class FieldRefused(ValueError):
    """A value of the right type outside its field's bounds; the message is the reason."""


def _strict_int(value: object, _: type) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {_json_type(value)}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise FieldRefused("integer out of the signed 64-bit range")
    return value


def _strict_float(value: object, _: type) -> float:
    if type(value) is not int and type(value) is not float:
        raise TypeError(f"expected a number, got {_json_type(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        raise FieldRefused("number out of range") from None
    if not math.isfinite(number):
        raise FieldRefused("number out of range")
    return number


def _strict_str(value: object, _: type) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {_json_type(value)}")
    return value


def _strict_bool(value: object, _: type) -> bool:
    if type(value) is not bool:
        raise TypeError(f"expected true or false, got {_json_type(value)}")
    return value


def one_of(values: Iterable[str]) -> str:
    """``must be one of 'a', 'b'``: the reason a value outside a closed set is refused."""
    return "must be one of " + ", ".join(repr(v) for v in values)


def _strict_str_enum(value: object, tp: type[StrEnum]) -> StrEnum:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {_json_type(value)}")
    try:
        return tp(value)
    except ValueError:
        raise FieldRefused(one_of(m.value for m in tp)) from None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    # By class, not by predicate: the ``str`` hook above would otherwise take its subclasses.
    conv.register_structure_hook(StrEnum, _strict_str_enum)
    conv.register_unstructure_hook(StrEnum, str.__str__)  # the plain string

    def list_hook_factory(tp: Any) -> Callable[[object, Any], Any]:
        (item,) = getattr(tp, "__args__", (Any,))
        structure_item = conv.get_structure_hook(item)

        def hook(value: object, _: Any) -> list[Any]:
            if type(value) is not list:
                raise TypeError(f"expected an array, got {_json_type(value)}")
            out = []
            for index, element in enumerate(value):
                try:
                    out.append(structure_item(element, item))
                except (TypeError, ValueError) as exc:
                    raise TypeError(f"item {index}: {exc}") from None
            return out

        return hook

    conv.register_structure_hook_factory(
        lambda tp: getattr(tp, "__origin__", None) is list, list_hook_factory
    )

    def bounded_hook(field: attrs.Attribute[Any], tp: Any) -> Callable[[object, Any], Any]:
        bounds = bounds_of(field)
        assert bounds is not None
        wire = _wire_name(field.name)
        structure_value = conv.get_structure_hook(tp)

        def hook(value: object, _: Any) -> Any:
            # Bounds first: an id of 2**64 is refused for its range, not for its size.
            reason = bounds.violation(value)
            if reason is not None:
                raise FieldRefused(f"{wire} {reason}")
            return structure_value(value, tp)

        return hook

    def structure_factory(cls: type[Any]) -> Callable[[Any, Any], Any]:
        hints = typing.get_type_hints(cls)
        overrides = {}
        for f in attrs.fields(cls):
            kwargs: dict[str, Any] = {}
            if f.name != _wire_name(f.name):
                kwargs["rename"] = _wire_name(f.name)
            if bounds_of(f) is not None:
                kwargs["struct_hook"] = bounded_hook(f, hints[f.name])
            if kwargs:
                overrides[f.name] = override(**kwargs)
        inner = make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, **overrides)  # type: ignore[arg-type]

        def hook(value: object, tp: Any) -> Any:
            if type(value) is not dict:
                raise TypeError(f"expected an object, got {_json_type(value)}")
            return inner(value, tp)

        return hook

    def unstructure_factory(cls: type[Any]) -> Callable[[Any], Any]:
        renames = {
            f.name: override(rename=_wire_name(f.name))
            for f in attrs.fields(cls)
            if f.name != _wire_name(f.name)
        }
        return make_dict_unstructure_fn(cls, conv, **renames)  # type: ignore[arg-type]

    conv.register_structure_hook_factory(attrs.has, structure_factory)
    conv.register_unstructure_hook_factory(attrs.has, unstructure_factory)
    return conv


CONVERTER: Final = _make_converter()


class RequestTable:
    """The requests one socket understands, by their ``cmd`` tag."""

    def __init__(self, socket_name: str, classes: Iterable[type[Request]]) -> None:
        self.socket_name = socket_name
        self.by_cmd: dict[str, type[Request]] = {}
        for cls in classes:
            if cls.CMD in self.by_cmd:
                raise ValueError(f"duplicate cmd {cls.CMD!r} on the {socket_name} socket")
            self.by_cmd[cls.CMD] = cls
        #: Each class's structure hook, looked up once instead of per request.
        self._hooks = {cmd: CONVERTER.get_structure_hook(cls) for cmd, cls in self.by_cmd.items()}

    def decode(self, line: bytes) -> Request:
        """Decode one request line (without its newline) or raise :class:`ProtocolError`."""
        return self.from_object(load_json_line(line, what="request"))

    def from_object(self, raw: object) -> Request:
        if not isinstance(raw, dict):
            raise ProtocolError(f"request must be a JSON object, got {_json_type(raw)}")
        if "cmd" not in raw:
            raise ProtocolError('request has no "cmd" field')
        cmd = raw["cmd"]
        if not isinstance(cmd, str):
            raise ProtocolError(f'"cmd" must be a string, got {_json_type(cmd)}')
        cls = self.by_cmd.get(cmd)
        if cls is None:
            shown = cmd if len(cmd) <= 40 else cmd[:40] + "…"
            known = ", ".join(sorted(self.by_cmd))
            raise ProtocolError(
                f"unknown command {shown!r} on the {self.socket_name} socket (known: {known})"
            )
        fields = {k: v for k, v in raw.items() if k != "cmd"}
        try:
            return self._hooks[cmd](fields, cls)  # type: ignore[no-any-return]
        except Exception:  # the reason is worked out below, as before
            return structure(fields, cls, what=f"{cmd!r} request")


_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_LONG_DIGITS: Final = re.compile(rb"[0-9]{%d}" % (MAX_JSON_NUMBER_CHARS + 1))
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEPS: Final = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")


def _nesting_depth(skeleton: bytes) -> int:
    """Deepest nesting of arrays and objects in JSON text whose strings were blanked out."""
    steps = skeleton.translate(None, _NOT_BRACKETS).translate(_BRACKET_STEPS)
    # Each byte is +1 (open) or -1 (close) read as signed; the running sum is the depth.
    return max(accumulate(memoryview(steps).cast("b")), default=0)


def _check_shape(line: bytes, what: str) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and over-long numbers, before parsing.

    The common case costs two counts and one search; only a line that might break a
    bound gets its strings blanked out (brackets and digits inside strings do not count).
    """
    deep = line.count(b"[") + line.count(b"{") > MAX_JSON_DEPTH
    long_number = _LONG_DIGITS.search(line) is not None
    if not (deep or long_number):
        return
    skeleton = _STRING.sub(b'""', line)
    if deep and _nesting_depth(skeleton) > MAX_JSON_DEPTH:
        raise ProtocolError(
            f"{what} is nested too deeply: more than {MAX_JSON_DEPTH} levels of arrays and objects"
        )
    if long_number and _LONG_DIGITS.search(skeleton) is not None:
        raise ProtocolError(
            f"{what} has a number longer than {MAX_JSON_NUMBER_CHARS} digits; "
            "no field takes one that large"
        )


class _Refused(Exception):
    """Raised from inside the JSON parser's hooks; becomes a :class:`ProtocolError`."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                shown = key if len(key) <= 40 else key[:40] + "…"
                raise _Refused(f"has the key {shown!r} more than once")
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise _Refused(f"has {name}, which is not a JSON number")


#: A number ``orjson`` might read as a float where ``json`` reads an int (beyond 64 bits).
_DIGITS_19: Final = re.compile(rb"[0-9]{19}")
_NOT_PARSED: Final = object()


def _keys_and_colons(value: object) -> tuple[int, int]:
    """Keys of all objects in ``value``, and the ``:`` characters in all its strings."""
    if type(value) is str:
        return 0, value.count(":")
    if type(value) is dict:
        keys, colons = len(value), sum(key.count(":") for key in value)
        items: Iterable[object] = value.values()
    elif type(value) is list:
        keys, colons, items = 0, 0, value
    else:
        return 0, 0
    for item in items:
        if type(item) is str:
            colons += item.count(":")
        elif type(item) is dict or type(item) is list:
            more_keys, more_colons = _keys_and_colons(item)
            keys += more_keys
            colons += more_colons
    return keys, colons


def _load_common(line: bytes) -> Any:
    """``orjson``'s reading of a line that ``json`` would read the same; else _NOT_PARSED.

    Every key written has its ``:``, so a line with as many ``:`` as the top-level object
    kept keys has no key twice (and no keys in nested objects). Otherwise: without ``\\u``
    escapes every ``:`` of a decoded string is one of the line's, so the line's ``:`` count
    minus those in the decoded strings is at least the number of keys written, which is at
    least the number kept: equal only when no key came twice.
    """
    if (
        b"\\u" in line
        or line.count(b"[") + line.count(b"{") > MAX_JSON_DEPTH
        or _DIGITS_19.search(line) is not None
    ):
        return _NOT_PARSED
    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _NOT_PARSED
    written = line.count(b":")
    if type(raw) is dict and len(raw) == written:
        return raw  # as many keys kept at the top as ``:`` in the line: none came twice
    keys, colons = _keys_and_colons(raw)
    if written - colons != keys:
        return _NOT_PARSED
    return raw


def load_json_line(line: bytes, *, what: str) -> Any:
    """Parse one untrusted JSON line (without its newline) or raise :class:`ProtocolError`."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"{what} line longer than {MAX_LINE_BYTES} bytes")
    raw = _load_common(line)
    if raw is not _NOT_PARSED:
        return raw
    return _load_checked(line, what)


def _load_checked(line: bytes, what: str) -> Any:
    """The standard library's parse, every check in its hooks: the reference behaviour."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    _check_shape(line, what)
    try:
        raw = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        reason = f"{what} is not valid JSON: {exc.msg} at column {exc.colno}"
        raise ProtocolError(reason) from None
    except _Refused as exc:
        raise ProtocolError(f"{what} {exc}") from None
    except RecursionError:  # not reachable after _check_shape; kept as a guard
        raise ProtocolError(f"{what} is nested too deeply") from None
    if _SURROGATE_ESCAPE.search(line) is not None:
        # A lone \\udXXX escape decodes to a str that can be neither stored nor sent.
        try:
            json.dumps(raw, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(
                f"{what} has a lone surrogate escape (\\ud800-\\udfff) in a string: "
                "text must be valid Unicode"
            ) from None
    return raw


def structure(raw: object, cls: type[T], *, what: str) -> T:
    """Strictly build ``cls`` from decoded JSON, raising :class:`ProtocolError` on mismatch."""
    try:
        return CONVERTER.structure(raw, cls)
    except cattrs.BaseValidationError as exc:
        reasons = "; ".join(
            cattrs.transform_error(exc, path="$", format_exception=_format_exception)
        )
        if attrs.has(cls):  # paths name attributes; show the wire name (``from``, not ``from_``)
            for field in attrs.fields(cls):
                if field.name != _wire_name(field.name):
                    reasons = reasons.replace(f"@ $.{field.name}", f"@ $.{_wire_name(field.name)}")
        raise ProtocolError(f"invalid {what}: {reasons}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise ProtocolError(f"invalid {what}: {exc}") from None


def _format_exception(exc: BaseException, tp: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, FieldRefused):
        return str(exc)
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        names = sorted(exc.extra_fields)
        shown = [n if len(n) <= 40 else n[:40] + "…" for n in names[:10]]
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        return f"unknown fields: {', '.join(shown)}{more}"
    if isinstance(exc, TypeError | ValueError) and str(exc).startswith(("expected", "item ")):
        return str(exc)
    if get_origin(tp) is Literal:
        return one_of(get_args(tp))
    return cattrs.v.format_exception(exc, tp)


_UNSTRUCTURE: Final[dict[type[Any], Callable[[Any], Any]]] = {}


def unstructure(obj: object) -> Any:
    """``CONVERTER.unstructure(obj)`` with the class's hook looked up once, not per call
    (a reply per request, an event per message)."""
    cls = type(obj)
    hook = _UNSTRUCTURE.get(cls)
    if hook is None:
        hook = _UNSTRUCTURE[cls] = CONVERTER.get_unstructure_hook(cls)
    return hook(obj)


def encode_request(request: Request) -> bytes:
    return _dump({"cmd": request.CMD, **unstructure(request)})


def encode_reply(reply: Reply, *, protocol: int | None = None) -> bytes:
    """A reply line; ``protocol`` (the host socket's replies) goes in as an envelope field."""
    envelope = {"ok": True} if protocol is None else {"ok": True, "protocol": protocol}
    return _dump_safe({**envelope, **unstructure(reply)})


def encode_error(reason: str, *, protocol: int | None = None) -> bytes:
    """An error line (``ok: false``), with the ``protocol`` envelope field when given."""
    if protocol is None:
        return _dump_safe({"ok": False, "error": reason})
    return _dump_safe({"ok": False, "protocol": protocol, "error": reason})


def _dump(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _dump_safe(obj: Mapping[str, Any]) -> bytes:
    """Like :func:`_dump`, but text that is not valid Unicode goes out \\u-escaped, never raises."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        pass  # a lone surrogate, an integer beyond 64 bits, a key that is not a string
    try:
        return _dump(obj)
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


AGENT_TABLE: Final = RequestTable("agent", AGENT_REQUESTS)
MANAGER_TABLE: Final = RequestTable("manager", MANAGER_REQUESTS)
HOST_TABLE: Final = RequestTable("host", HOST_REQUESTS)

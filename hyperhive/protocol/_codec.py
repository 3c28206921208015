"""The one strict codec between JSON lines and the attrs classes of ``_messages``.

Strict means: no coercion (``"5"`` is not an int, ``1`` is not a bool), no unknown fields,
every required field present. Errors come out as :class:`ProtocolError` with a reason a
person can act on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from hyperhive.config import MAX_LINE_BYTES
from hyperhive.errors import ProtocolError
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


def _strict_int(value: object, _: type) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {_json_type(value)}")
    return value


def _strict_float(value: object, _: type) -> float:
    if type(value) is int or type(value) is float:
        return float(value)
    raise TypeError(f"expected a number, got {_json_type(value)}")


def _strict_str(value: object, _: type) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {_json_type(value)}")
    return value


def _strict_bool(value: object, _: type) -> bool:
    if type(value) is not bool:
        raise TypeError(f"expected true or false, got {_json_type(value)}")
    return value


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

    def structure_factory(cls: type[Any]) -> Callable[[Any, Any], Any]:
        renames = {
            f.name: override(rename=_wire_name(f.name))
            for f in attrs.fields(cls)
            if f.name != _wire_name(f.name)
        }
        inner = make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, **renames)  # type: ignore[arg-type]

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

    def decode(self, line: bytes) -> Request:
        """Decode one request line (without its newline) or raise :class:`ProtocolError`."""
        if len(line) > MAX_LINE_BYTES:
            raise ProtocolError(f"request line longer than {MAX_LINE_BYTES} bytes")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"request is not valid UTF-8 (byte {exc.start})") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            reason = f"request is not valid JSON: {exc.msg} at column {exc.colno}"
            raise ProtocolError(reason) from None
        except RecursionError:
            raise ProtocolError("request is nested too deeply") from None
        return self.from_object(raw)

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
        return structure(fields, cls, what=f"{cmd!r} request")


def structure(raw: object, cls: type[T], *, what: str) -> T:
    """Strictly build ``cls`` from decoded JSON, raising :class:`ProtocolError` on mismatch."""
    try:
        return CONVERTER.structure(raw, cls)
    except cattrs.BaseValidationError as exc:
        reasons = "; ".join(
            cattrs.transform_error(exc, path="$", format_exception=_format_exception)
        )
        raise ProtocolError(f"invalid {what}: {reasons}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise ProtocolError(f"invalid {what}: {exc}") from None


def _format_exception(exc: BaseException, tp: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown fields: {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, TypeError | ValueError) and str(exc).startswith(("expected", "item ")):
        return str(exc)
    if get_origin(tp) is Literal:
        allowed = ", ".join(repr(a) for a in get_args(tp))
        return f"must be one of {allowed}"
    return cattrs.v.format_exception(exc, tp)


def encode_request(request: Request) -> bytes:
    body = CONVERTER.unstructure(request)
    return _dump({"cmd": request.CMD, **body})


def encode_reply(reply: Reply) -> bytes:
    return _dump({"ok": True, **CONVERTER.unstructure(reply)})


def encode_error(reason: str) -> bytes:
    return _dump({"ok": False, "error": reason})


def _dump(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


AGENT_TABLE: Final = RequestTable("agent", AGENT_REQUESTS)
MANAGER_TABLE: Final = RequestTable("manager", MANAGER_REQUESTS)
HOST_TABLE: Final = RequestTable("host", HOST_REQUESTS)

"""Functions from user code, named ``package.module:function`` or ``path/to/file.py:function``.

Reward functions (:mod:`rlsteer.reward_functions`) and datasets built by a function (:mod:`rlsteer.data`) are
named this way. A module is imported as Python imports it (from ``sys.path``; a module in the current folder
is best named as a file, ``my_rewards.py:fn``). A file is loaded as a module of its own, with its folder
appended to ``sys.path`` so that it can import the modules next to it; its sha256 goes on the record.

Example:
    >>> fn = load_function("json:dumps")
    >>> fn.name, fn.call([1]), fn.record()
    ('dumps', '[1]', {'function': 'json:dumps'})
    >>> looks_like_function("rlsteer.examples.json_reply:training_rows"), looks_like_function("hub:math500")
    (True, False)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsteer.errors import RlsteerError, first_line

_MODULE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*")
_NAME = re.compile(r"[A-Za-z_]\w*")


class UserCodeError(RlsteerError):
    pass


@dataclass(frozen=True)
class UserFunction:
    """A loaded function: ``spec`` as the user gave it, its ``name``, the callable, and for a file its path
    and sha256."""

    spec: str
    name: str
    call: Callable[..., Any]
    file: str | None = None
    sha256: str | None = None

    def record(self) -> dict[str, str]:
        """What identifies it, for protocol.json: the spec, and for a file its absolute path and sha256."""
        out = {"function": self.spec}
        if self.file is not None and self.sha256 is not None:
            out.update(file=self.file, sha256=self.sha256)
        return out


def split_spec(spec: str) -> tuple[str, str]:
    """``(module or file, function name)``; a spec without ``:FUNCTION`` is an error."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not _NAME.fullmatch(name):
        raise UserCodeError(f"{spec!r} does not name a function; write package.module:function or "
                            "path/to/file.py:function")
    return target, name


def is_file_spec(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def looks_like_function(spec: str) -> bool:
    """Whether ``spec`` has the shape of ``package.module:function`` or ``file.py:function`` (nothing imported).

    ``hub:NAME`` is not a function (``hub`` is rlsteer's hub prefix, not a module).
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not _NAME.fullmatch(name) or target == "hub":
        return False
    return target.endswith(".py") or bool(_MODULE.fullmatch(target))


def load_function(spec: str, *, what: str = "function") -> UserFunction:
    """Import the function ``spec`` names; every failure is one :class:`UserCodeError` line naming the spec.

    ``what`` names the function's role in messages (``reward function``, ``dataset function``).
    """
    target, name = split_spec(spec)
    if is_file_spec(target):
        path = Path(target).expanduser()
        if not path.is_file():
            raise UserCodeError(f"{what} {spec!r}: no file {target}; give an existing .py file or "
                                "package.module:function")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        module = _load_file(path.resolve(), digest, spec, what)
        file: str | None = str(path.resolve())
    else:
        module, file, digest = _import(target, spec, what), None, None
    fn = getattr(module, name, None)
    if fn is None:
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        hint = f" (it has: {', '.join(public[:12])})" if public else ""
        raise UserCodeError(f"{what} {spec!r}: {target} has no {name!r}{hint}")
    if not callable(fn):
        raise UserCodeError(f"{what} {spec!r}: {name} is a {type(fn).__name__}, not a function")
    return UserFunction(spec, name, fn, file, digest)


def _import(module: str, spec: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and module.startswith(err.name):
            raise UserCodeError(f"{what} {spec!r}: no module named {err.name!r}; for a file in this folder write "
                                f"{module.replace('.', '/')}.py:{spec.rpartition(':')[2]}, or add its folder to "
                                "PYTHONPATH") from None
        raise UserCodeError(f"{what} {spec!r}: importing {module} failed: {first_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - the user's module failed at import time: say so in one line
        raise UserCodeError(f"{what} {spec!r}: importing {module} failed: {type(err).__name__}: "
                            f"{first_line(err)}") from None


def _load_file(path: Path, digest: str, spec: str, what: str) -> Any:
    """The file as a module named after its content (loading the same file twice gives the same module)."""
    name = f"rlsteer_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # its own helper modules, as `python file.py` would find them
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise UserCodeError(f"{what} {spec!r}: {path} cannot be loaded as Python; give a .py file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's file failed at import time: one line, with its cause
        del sys.modules[name]
        raise UserCodeError(f"{what} {spec!r}: loading {path.name} failed: {type(err).__name__}: "
                            f"{first_line(err)}") from None
    return module

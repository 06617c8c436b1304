"""Print the docstrings of a fixed list of standard-library modules as JSON lines.

Run as a script in a clean interpreter (``python -I -S``): third-party packages patch stdlib
objects at import time (e.g. transformers adds ``logging.Logger.warning_advice``), so walking
the stdlib inside our own process would make the corpus depend on what happened to be imported.
This file uses the standard library only.
"""

import importlib
import inspect
import json
import sys

MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs",
    "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email.message", "enum", "filecmp", "fnmatch", "fractions",
    "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac",
    "html.parser", "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress",
    "itertools", "json", "logging", "lzma", "mailbox", "math", "mimetypes", "multiprocessing",
    "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil", "platform", "plistlib",
    "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "signal", "smtplib", "socket", "socketserver", "sqlite3", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback",
    "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave",
    "weakref", "xml.dom.minidom", "zipfile", "zoneinfo",
)  # fmt: skip


def docstrings(module_name):
    """(qualified name, cleaned docstring) for a module and its public classes, functions, methods."""
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - a module missing on this platform (e.g. turtle without tk)
        return
    seen = set()

    def emit(name, obj):
        doc = inspect.getdoc(obj) if id(obj) not in seen else None
        seen.add(id(obj))
        if doc and len(doc) > 40:
            yield name, doc

    yield from emit(module_name, module)
    for attr in sorted(vars(module)):
        obj = getattr(module, attr)
        if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield from emit(f"{module_name}.{attr}", obj)
        if inspect.isclass(obj):
            for meth in sorted(vars(obj)):
                if not meth.startswith("_") and inspect.isfunction(vars(obj)[meth]):
                    yield from emit(f"{module_name}.{attr}.{meth}", vars(obj)[meth])


if __name__ == "__main__":
    for module_name in MODULES:
        for name, doc in docstrings(module_name):
            sys.stdout.write(json.dumps([name, doc]) + "\n")

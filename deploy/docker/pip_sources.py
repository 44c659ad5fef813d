"""Pass this machine's pip configuration into an image build (the Dockerfile's PIP_* arguments).

pip on a build machine may not reach PyPI the default way: a mirror (``index-url``), local
indexes or wheel folders (``file://`` URLs, paths), a TLS-inspecting proxy's CA bundle
(``cert``). The image build runs in another root filesystem, where none of those files exist.
This script reads pip's effective settings (``pip config list``: environment over the
``install`` section over ``global``) and runs a build command with them as build arguments:

- ``index-url``, ``extra-index-url``, ``find-links``, ``trusted-host``, ``default-timeout``:
  ``--build-arg PIP_<NAME>=...`` (pip reads them from the environment of the build's RUN steps);
  a local location is served read-only over HTTP on 127.0.0.1 for as long as the command runs
  (the build shares this machine's network: buildah's chroot isolation does), at the same path,
  so an index page's relative links (``../../files/x.whl``) still resolve;
- ``cert``: ``--secret id=pip_cert,src=FILE`` with ``PIP_CERT=/run/secrets/pip_cert`` (mounted
  for the pip steps only, in no layer).

``constraint`` is not passed (a cap that fits this machine's venv, not the image's pins).

    pip_sources.py run -- buildah bud {pip} --build-arg TORCH_INDEX={index-url} -t x .

In ``run``, the argument ``{pip}`` becomes the build arguments, and ``{index-url}`` inside any
argument the effective index URL (translated like the others).
"""

from __future__ import annotations

import argparse
import ast
import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

PYPI = "https://pypi.org/simple"
# pip option -> build argument; the multi-valued ones are space-separated lists.
OPTIONS = {
    "index-url": "PIP_INDEX_URL",
    "extra-index-url": "PIP_EXTRA_INDEX_URL",
    "find-links": "PIP_FIND_LINKS",
    "trusted-host": "PIP_TRUSTED_HOST",
    "default-timeout": "PIP_DEFAULT_TIMEOUT",
}
INDEXES = ("index-url", "extra-index-url")  # served with their parent (sibling files/ folders)
LOCATIONS = (*INDEXES, "find-links")
CERT_TARGET = "/run/secrets/pip_cert"
# The port is part of the build arguments, and so of the build cache's keys: the same one each
# time (PIP_SOURCES_PORT), any free one only where that is taken.
PORT = int(os.environ.get("PIP_SOURCES_PORT", "38517"))
# The precedence pip applies: environment, then the command's own section, then [global].
SCOPES = (":env:", "install", "global")


def effective_config(python: str) -> dict[str, str]:
    """pip option -> value, as ``python -m pip`` would use it for ``pip install``."""
    done = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    )
    return parse_config_list(done.stdout)


def parse_config_list(text: str) -> dict[str, str]:
    """Read ``pip config list`` (lines ``scope.name='value'``; the files already merged by pip)
    and keep, per option, the value of the strongest scope."""
    found: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        scope, dot, name = key.rpartition(".")
        if sep and dot and scope in SCOPES:
            found[scope, name] = ast.literal_eval(raw)
    names = {name for _, name in found}
    return {
        name: next(found[s, name] for s in SCOPES if (s, name) in found) for name in sorted(names)
    }


def local_path(location: str) -> Path | None:
    """The folder or file a ``file://`` URL or a path names; None for a remote URL."""
    if location.startswith("file:"):
        return Path(unquote(urlsplit(location).path))
    if "://" not in location:
        return Path(location).resolve()
    return None


class ReadOnlyFiles(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD of files and folder listings under ``roots`` only, at their own paths."""

    roots: tuple[Path, ...] = ()

    def translate_path(self, path: str) -> str:
        target = Path(unquote(urlsplit(path).path)).resolve()
        if any(target == r or r in target.parents for r in self.roots):
            return str(target)
        return "/nonexistent-outside-the-served-roots"

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_server(roots: set[Path]) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(ReadOnlyFiles, directory="/")
    ReadOnlyFiles.roots = tuple(sorted(roots))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), handler)
    except OSError:  # taken (another build running)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def build_arguments(config: dict[str, str], base_url: str) -> tuple[list[str], set[Path], str]:
    """(build arguments, local roots to serve, effective index URL), local locations rewritten
    to ``base_url`` + their path."""
    roots: set[Path] = set()
    values: dict[str, str] = {}
    for name in OPTIONS:
        if name not in config:
            continue
        words = config[name].split()
        if name in LOCATIONS:
            for i, word in enumerate(words):
                path = local_path(word)
                if path is None:
                    continue
                roots.add(path.parent if name in INDEXES or path.is_file() else path)
                words[i] = base_url + str(path)
        values[name] = " ".join(words)
    if roots:
        trusted = values.get("trusted-host", "").split()
        values["trusted-host"] = " ".join([*trusted, urlsplit(base_url).hostname or ""])
    args = [f"--build-arg={OPTIONS[n]}={v}" for n, v in values.items()]
    if "cert" in config:
        args.append(f"--secret=id=pip_cert,src={config['cert']}")
        args.append(f"--build-arg=PIP_CERT={CERT_TARGET}")
    return args, roots, values.get("index-url", PYPI)


def run(command: list[str], python: str) -> int:
    config = effective_config(python)
    server = start_server(set())
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    args, roots, index_url = build_arguments(config, base_url)
    ReadOnlyFiles.roots = tuple(sorted(roots))
    expanded: list[str] = []
    for word in command:
        expanded += args if word == "{pip}" else [word.replace("{index-url}", index_url)]
    for root in sorted(roots):
        print(f"pip_sources: serving {root} on {base_url}", file=sys.stderr)
    try:
        return subprocess.run(expanded).returncode
    finally:
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=os.environ.get("PIP_PYTHON", sys.executable))
    sub = parser.add_subparsers(dest="action", required=True)
    go = sub.add_parser("run", help="run COMMAND with {pip} and {index-url} expanded")
    go.add_argument("command", nargs=argparse.REMAINDER)
    ns = parser.parse_args()
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command:
        parser.error("run: no command")
    sys.exit(run(command, ns.python))


if __name__ == "__main__":
    main()

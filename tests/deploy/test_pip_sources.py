"""deploy/docker/pip_sources.py: this machine's pip configuration becomes the image build's PIP_*
arguments, local indexes are served on loopback at their own paths while the build runs, and a
CA bundle becomes a build secret; the Dockerfile declares what it passes, with no value."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from deploy_helpers import ROOT

SCRIPT = ROOT / "deploy" / "docker" / "pip_sources.py"
_spec = importlib.util.spec_from_file_location("pip_sources", SCRIPT)
assert _spec and _spec.loader
pip_sources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pip_sources)

# What the build command sees: its arguments, and what it fetched through the served URLs.
PROBE = """
import json, sys, urllib.error, urllib.request
args = sys.argv[1:]
value = {a.split("=")[1]: a.split("=", 2)[2] for a in args if a.startswith("--build-arg=")}
def get(url):
    try:
        return urllib.request.urlopen(url, timeout=10).read().decode()
    except urllib.error.HTTPError as error:
        return error.code
index = value["PIP_INDEX_URL"]
root = index.split("/", 3)[0] + "//" + index.split("/", 3)[2]
print(json.dumps({
    "args": args,
    "page": get(index + "/pkg/"),
    "wheel": get(index + "/pkg/../../files/pkg-1.0-py3-none-any.whl"),
    "links": get(value["PIP_FIND_LINKS"]),
    "outside": get(root + sys.argv[-1]),
}))
sys.exit(3)
"""


def test_local_sources_are_served_and_the_cert_is_a_secret(tmp_path: Path) -> None:
    (tmp_path / "idx" / "simple" / "pkg").mkdir(parents=True)
    (tmp_path / "idx" / "files").mkdir()
    (tmp_path / "wheels").mkdir()
    link = '<a href="../../files/pkg-1.0-py3-none-any.whl">pkg</a>'
    (tmp_path / "idx" / "simple" / "pkg" / "index.html").write_text(link)
    (tmp_path / "idx" / "files" / "pkg-1.0-py3-none-any.whl").write_text("wheel bytes")
    (tmp_path / "wheels" / "torch-2.13.0+cpu-x.whl").write_text("x")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----")
    (tmp_path / "private.txt").write_text("not served")
    (tmp_path / "probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {
        "PIP_CONFIG_FILE": os.devnull,  # no configuration files: only what is set here
        "PIP_INDEX_URL": (tmp_path / "idx" / "simple").as_uri(),
        "PIP_EXTRA_INDEX_URL": "https://mirror.example/simple",
        "PIP_FIND_LINKS": str(tmp_path / "wheels"),
        "PIP_CERT": str(tmp_path / "ca.pem"),
        "PIP_DEFAULT_TIMEOUT": "7",
    }
    command = [sys.executable, str(SCRIPT), "run", "--", sys.executable, str(tmp_path / "probe.py")]
    command += ["{pip}", "TORCH_INDEX={index-url}", str(tmp_path / "private.txt")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 3, done.stderr  # the command's own exit status
    seen = json.loads(done.stdout)
    value = {a.split("=")[1]: a.split("=", 2)[2] for a in seen["args"] if a.startswith("--b")}
    served = value["PIP_INDEX_URL"].removesuffix(f"{tmp_path}/idx/simple")
    assert served.startswith("http://127.0.0.1:")
    assert value["PIP_EXTRA_INDEX_URL"] == "https://mirror.example/simple"  # remote: as is
    assert value["PIP_FIND_LINKS"] == f"{served}{tmp_path}/wheels"
    assert value["PIP_TRUSTED_HOST"] == "127.0.0.1" and value["PIP_DEFAULT_TIMEOUT"] == "7"
    assert value["PIP_CERT"] == "/run/secrets/pip_cert"
    assert f"--secret=id=pip_cert,src={tmp_path}/ca.pem" in seen["args"]
    assert f"TORCH_INDEX={served}{tmp_path}/idx/simple" in seen["args"]
    assert seen["page"] == link and seen["wheel"] == "wheel bytes"
    assert "torch-2.13.0%2Bcpu-x.whl" in seen["links"]
    assert seen["outside"] == 404  # only the configured locations (an index with its parent)


def test_the_strongest_scope_wins_and_the_constraint_stays_behind() -> None:
    listing = "\n".join(
        [
            "global.index-url='https://global.example/simple'",
            "install.index-url='https://install.example/simple'",
            "global.find-links='/opt/wheels'",
            ":env:.find-links='/env/wheels'",
            "global.constraint='/etc/xdg/pip/constraints.txt'",
            "global.extra-index-url='file:///a/simple file:///b/simple'",
        ]
    )
    config = pip_sources.parse_config_list(listing)
    assert config["index-url"] == "https://install.example/simple"
    assert config["find-links"] == "/env/wheels"
    args, roots, index = pip_sources.build_arguments(config, "http://127.0.0.1:9")
    assert not any("constraint" in a.lower() for a in args)
    assert (
        "--build-arg=PIP_EXTRA_INDEX_URL=http://127.0.0.1:9/a/simple http://127.0.0.1:9/b/simple"
        in args
    )
    assert roots == {Path("/a"), Path("/b"), Path("/env/wheels")}
    assert index == "https://install.example/simple"


def test_the_dockerfile_declares_every_pip_argument_without_a_value() -> None:
    """pip reads these from the RUN steps' environment; a value here would hard-code an index."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    build_stage = dockerfile.split(" AS build")[1].split(" AS runtime")[0]
    for name in [*pip_sources.OPTIONS.values(), "PIP_CERT"]:
        assert f"\nARG {name}\n" in build_stage, name
        assert f"ARG {name}" not in dockerfile.split(" AS runtime")[1], name
    # Every install reaches the index: even /src's (pip fetches its build backend).
    joined = build_stage.replace("\\\n", " ")  # continuation lines joined
    installs = [line for line in joined.splitlines() if "pip install" in line]
    assert len(installs) >= 3
    for line in installs:
        assert "--mount=type=secret,id=pip_cert" in line, line

"""Building the CPU add_lora kernel: ``cpu_kernel.c``, compiled once per machine.

The kernel is compiled on first use with the system C compiler (``$CC`` or ``cc``), with
``-march=native`` and OpenMP, into ``cache_dir/add_lora-<key>.so``. The key hashes the source,
the flags, the compiler's version and this CPU's model and feature flags, so a cache shared
between machines never hands one CPU a library built for another. It links the OpenMP runtime
that torch has already loaded (libgomp), so both share one thread pool. ``cpu_ops.py`` loads
the library and is the op.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("cpu_kernel.c")


def _cpu_has_f16c() -> bool:
    try:
        return " f16c" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# Tried in order: the fast build; without -march=native (a compiler that lacks it) but with
# F16C's half -> float instructions where this CPU has them (a compiler that lacks -mf16c
# fails this set too); without them (float16 tables are widened in integer lanes); without
# OpenMP (a compiler without it runs the kernel on one thread).
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    *((("-O3", "-mf16c", "-fopenmp"),) if _cpu_has_f16c() else ()),
    ("-O3", "-fopenmp"),
    ("-O3",),
)
COMMON_FLAGS = ("-std=c11", "-shared", "-fPIC")


class KernelBuildError(RuntimeError):
    """The C kernel could not be compiled or loaded here (no compiler, or it failed)."""


def _cpu_identity() -> str:
    """This CPU's model and feature flags (what ``-march=native`` compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.startswith(wanted)}))


def _compiler() -> str:
    return os.environ.get("CC") or "cc"


def _compiler_version(cc: str) -> str:
    try:
        done = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelBuildError(f"no C compiler ({cc!r}: {exc})") from exc
    return done.stdout


def build(cache_dir: Path, flag_sets: tuple[tuple[str, ...], ...] = FLAG_SETS) -> Path:
    """Compile the kernel into ``cache_dir`` (once; later calls return the cached library),
    with the first of ``flag_sets`` that works."""
    cc = _compiler()
    version = _compiler_version(cc)
    source, cpu = SOURCE.read_bytes(), _cpu_identity()
    errors = []
    for flags in flag_sets:
        key = hashlib.sha256(
            b"\0".join(s.encode() for s in (cc, version, *flags, cpu)) + source
        ).hexdigest()[:16]
        target = cache_dir / f"add_lora-{key}.so"
        if target.exists():
            return target
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            # Build beside the target and rename: concurrent builders never see a partial file.
            fd, partial = tempfile.mkstemp(dir=cache_dir, suffix=".so.partial")
            os.close(fd)
        except OSError as exc:  # e.g. a read-only cache folder
            raise KernelBuildError(f"cannot write the kernel into {cache_dir}: {exc}") from exc
        command = [cc, *flags, *COMMON_FLAGS, str(SOURCE), "-o", partial]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                os.replace(partial, target)
                return target
            errors.append(f"{' '.join(command)}: {done.stderr.strip()[-500:]}")
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{' '.join(command)}: {exc}")
        finally:
            Path(partial).unlink(missing_ok=True)
    raise KernelBuildError("could not compile the add_lora kernel:\n" + "\n".join(errors))

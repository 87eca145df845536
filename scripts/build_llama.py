"""Install llama-cpp-python into this venv, compiled for the CPU `make install` runs on.

    .venv/bin/python scripts/build_llama.py [--build native|portable] [--show]

PyPI has no prebuilt wheel of llama-cpp-python for CPUs, so pip compiles it, and caches the wheel
under a key that ignores CMAKE_ARGS: a portable wheel once cached is silently reused for a native
build, and a native wheel cached on one CPU would be reused on another (where it dies on the first
AVX-512 instruction). So the wheel is built here, once per *build key*, into
~/.cache/autointerp/llama-wheels/KEY/ (or under $XDG_CACHE_HOME), with pip's own cache off. The key
holds what the compiled code depends on: the llama-cpp-python version (pinned once, in
pyproject.toml), the build kind, the instruction-set flags of the CPU (for a native build), the
compiler and any CMAKE_ARGS the user adds (not the Python version: the wheel is py3-none, the library
is loaded through ctypes). The venv records the key it holds (.venv/.llama-build), so a second run
with the same key installs nothing, and a venv moved to another CPU, or asked for the other kind,
gets the wheel for it.

- `native` (default): GGML_NATIVE=ON, the compiler's -march=native: AVX-512, VNNI, AMX... where the
  CPU has them. Fastest here, and only here.
- `portable`: GGML_NATIVE=OFF, for images that run on other CPUs (AVX2 and the like).

Standard library only: it runs before anything else is installed into the venv.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGE = "llama-cpp-python"
ROOT = Path(__file__).resolve().parents[1]
BUILDS = {"native": ["-DGGML_NATIVE=ON"], "portable": ["-DGGML_NATIVE=OFF"]}
RECORD = ".llama-build"  # in the venv: the key of the build installed there

# x86 /proc/cpuinfo flags a compiler may emit instructions for under -march=native; the other flags
# (tsc, ht, hypervisor, the mitigations...) say nothing about what code runs, so they are left out of
# the key, where they would only cause rebuilds
X86_ISA_PREFIXES = (
    "sse",
    "ssse3",
    "pni",  # SSE3
    "avx",  # avx, avx2, avx512*, avx_vnni*, avx_ifma, avx_ne_convert...
    "amx",
    "fma",  # fma, fma4
    "f16c",
    "bmi",
    "abm",  # lzcnt
    "popcnt",
    "movbe",
    "adx",
    "aes",
    "vaes",
    "pclmulqdq",
    "vpclmulqdq",
    "gfni",
    "sha_ni",
    "xop",
    "tbm",
    "cx16",
)


def isa_flags(cpuinfo: str, machine: str) -> list[str]:
    """The instruction-set flags of the first processor in a /proc/cpuinfo text, sorted: on x86 the
    ISA extensions among its `flags`; elsewhere (aarch64's `Features`: asimd, sve, i8mm...) all of them."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in ("flags", "features"):
            flags = set(value.split())
            if machine in ("x86_64", "amd64", "i686", "i386"):
                flags = {f for f in flags if f.startswith(X86_ISA_PREFIXES)}
            return sorted(flags)
    return []


def cpu_flags(machine: str) -> list[str]:
    """This machine's instruction-set flags, from /proc/cpuinfo or (macOS) sysctl; [] when neither
    says (the key then only holds the machine's architecture)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        return isa_flags(cpuinfo.read_text(errors="replace"), machine)
    if sys.platform == "darwin":
        names = ["machdep.cpu.features", "machdep.cpu.leaf7_features", "machdep.cpu.brand_string"]
        out = subprocess.run(["sysctl", "-n", *names], capture_output=True, text=True, check=False).stdout
        return sorted(set(out.lower().split()))
    return []


def compiler_version() -> str:
    """The first line of `$CC --version` (the C compiler CMake will pick up), or "" without one."""
    cc = os.environ.get("CC") or "cc"
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""
    return out.splitlines()[0].strip() if out else ""


def pinned_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The llama-cpp-python version pyproject.toml pins (`llama-cpp-python[...]==X`): the one place it is set."""
    found = re.findall(r'"llama-cpp-python(?:\[[^\]]*\])?==([^";\s]+)', pyproject.read_text())
    if len(set(found)) != 1:
        raise SystemExit(f"{pyproject}: expected one pinned llama-cpp-python==VERSION, found {found or 'none'}")
    return found[0]


@dataclass(frozen=True)
class BuildSpec:
    """What the compiled wheel depends on: two specs with the same key build the same code."""

    version: str
    build: str  # native or portable
    machine: str
    compiler: str
    cmake_args: tuple[str, ...]
    cpu: tuple[str, ...]  # instruction-set flags; empty for a portable build, which must not depend on them

    @property
    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.version}-{self.build}-{self.machine}-{digest}"


def cmake_args(build: str, user_args: str = "") -> tuple[str, ...]:
    """The CMake options of a build kind, then the user's own CMAKE_ARGS (a GPU backend, say), which
    come last so they can override."""
    if build not in BUILDS:
        raise SystemExit(f"unknown build {build!r}: one of {', '.join(BUILDS)}")
    return (*BUILDS[build], *shlex.split(user_args))


def build_spec(build: str, *, version: str, cpu: list[str], machine: str, compiler: str, user_args: str) -> BuildSpec:
    return BuildSpec(
        version=version,
        build=build,
        machine=machine,
        compiler=compiler,
        cmake_args=cmake_args(build, user_args),
        cpu=tuple(sorted(set(cpu))) if build == "native" else (),
    )


def this_machine(build: str) -> BuildSpec:
    machine = platform.machine().lower()
    return build_spec(
        build,
        version=pinned_version(),
        cpu=cpu_flags(machine),
        machine=machine,
        compiler=compiler_version(),
        user_args=os.environ.get("CMAKE_ARGS", ""),
    )


def wheel_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autointerp" / "llama-wheels"


def cached_wheel(spec: BuildSpec, cache: Path) -> Path | None:
    wheels = sorted((cache / spec.key).glob("*.whl"))
    return wheels[0] if wheels else None


def build_wheel(spec: BuildSpec, cache: Path) -> Path:
    """Compile the wheel into cache/KEY/ (a few minutes). Built in a scratch folder and moved into
    place whole, so two installs at once never see half a wheel; pip's own cache is off so it neither
    serves a wheel built with other CMake options nor keeps this one under a key that ignores them."""
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=cache, prefix=".building-"))
    try:
        env = {**os.environ, "CMAKE_ARGS": " ".join(spec.cmake_args)}
        print(f"building {PACKAGE}=={spec.version} ({spec.build}: {' '.join(spec.cmake_args)}), a few minutes")
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir"]
        command += ["--no-binary", PACKAGE, "--wheel-dir", str(scratch), f"{PACKAGE}=={spec.version}"]
        subprocess.run(command, env=env, check=True)
        (scratch / "spec.json").write_text(json.dumps(asdict(spec), indent=1) + "\n")
        try:
            os.replace(scratch, cache / spec.key)
        except OSError:  # another install finished the same key first: use its wheel
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    wheel = cached_wheel(spec, cache)
    if wheel is None:
        raise SystemExit(f"pip built no wheel into {cache / spec.key}")
    return wheel


def installed_key(prefix: Path) -> str | None:
    """The key of the build this venv holds; None when it holds none of ours (or another version,
    installed by hand since)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        record = json.loads((prefix / RECORD).read_text())
        version(PACKAGE)
    except (OSError, ValueError, PackageNotFoundError):
        return None
    return record.get("key") if record.get("version") == version(PACKAGE) else None


def install(spec: BuildSpec, prefix: Path, cache: Path) -> bool:
    """Install the wheel of `spec` unless the venv already holds it; True when it installed."""
    if installed_key(prefix) == spec.key:
        return False
    wheel = cached_wheel(spec, cache) or build_wheel(spec, cache)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)]
    subprocess.run(command, check=True)
    (prefix / RECORD).write_text(json.dumps({"key": spec.key, "version": spec.version, "wheel": str(wheel)}) + "\n")
    print(f"installed {wheel}")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", choices=sorted(BUILDS), default="native")
    parser.add_argument("--show", action="store_true", help="print the build key and what it holds; install nothing")
    args = parser.parse_args()
    spec = this_machine(args.build)
    if args.show:
        print(json.dumps({"key": spec.key, **asdict(spec)}, indent=1))
        return
    if sys.prefix == sys.base_prefix:
        raise SystemExit("run it with the venv's python (.venv/bin/python scripts/build_llama.py): it installs there")
    install(spec, Path(sys.prefix), wheel_cache())


if __name__ == "__main__":
    main()

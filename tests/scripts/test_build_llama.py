"""scripts/build_llama.py: the build key that keeps one CPU's llama.cpp wheel off another CPU (and a
portable wheel out of a native install), the CMake options of each build kind, and the venv record
that makes a second install a no-op. Nothing here compiles llama.cpp: pip is never run for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.scripts import load_script

build_llama = load_script("build_llama")

AVX2_CPU = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi1 bmi2 avx2 popcnt"
AVX512_CPU = AVX2_CPU + " avx512f avx512bw avx512vl avx512_vnni avx512_bf16"


def _cpuinfo(flags: str) -> str:
    return f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\nbogomips\t: 4000\n\nprocessor\t: 1\n"


def _key(flags: str, build: str = "native", **changes: str) -> str:
    machine = changes.pop("machine", "x86_64")
    fields = {"version": "0.3.36", "compiler": "gcc 12.2.0", "user_args": "", **changes}
    cpu = build_llama.isa_flags(_cpuinfo(flags), machine)
    return build_llama.build_spec(build, cpu=cpu, machine=machine, **fields).key


def test_key_tells_cpus_with_other_instruction_sets_apart():
    assert _key(AVX2_CPU) != _key(AVX512_CPU)
    assert _key(AVX512_CPU) != _key(AVX512_CPU + " amx_tile amx_int8 amx_bf16")
    assert _key(AVX512_CPU) != _key(AVX512_CPU + " avx_vnni")


def test_key_ignores_the_order_of_flags_and_the_flags_no_compiler_emits():
    shuffled = " ".join(reversed(AVX512_CPU.split()))
    assert _key(AVX512_CPU) == _key(shuffled)
    # a hypervisor, a clock and a mitigation say nothing about the code that runs
    assert _key(AVX512_CPU) == _key(AVX512_CPU + " hypervisor constant_tsc ibrs ht")
    assert "hypervisor" not in build_llama.isa_flags(_cpuinfo(AVX512_CPU + " hypervisor"), "x86_64")


def test_key_holds_version_compiler_user_cmake_args_and_build_kind():
    base = _key(AVX512_CPU)
    assert base != _key(AVX512_CPU, version="0.3.37")
    assert base != _key(AVX512_CPU, compiler="gcc 13.1.0")
    assert base != _key(AVX512_CPU, user_args="-DGGML_CUDA=ON")
    assert base != _key(AVX512_CPU, "portable")
    assert base.startswith("0.3.36-native-x86_64-")


def test_portable_key_does_not_depend_on_the_cpu():
    """A portable wheel runs anywhere: one built on an AVX-512 machine serves an AVX2 one."""
    assert _key(AVX2_CPU, "portable") == _key(AVX512_CPU, "portable")


def test_arm_features_all_count():
    cpuinfo = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n"
    assert build_llama.isa_flags(cpuinfo, "aarch64") == sorted(
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp".split()
    )
    assert build_llama.isa_flags("processor\t: 0\n", "x86_64") == []


def test_cmake_args_per_build_kind_with_the_users_last():
    assert build_llama.cmake_args("native") == ("-DGGML_NATIVE=ON",)
    assert build_llama.cmake_args("portable") == ("-DGGML_NATIVE=OFF",)
    assert build_llama.cmake_args("native", "-DGGML_CUDA=ON -DGGML_NATIVE=OFF") == (
        "-DGGML_NATIVE=ON",
        "-DGGML_CUDA=ON",
        "-DGGML_NATIVE=OFF",
    )
    with pytest.raises(SystemExit, match="unknown build"):
        build_llama.cmake_args("fastest")


def test_version_is_read_from_the_one_pin_in_pyproject(tmp_path):
    from importlib.metadata import version

    assert build_llama.pinned_version() == version("llama-cpp-python")  # `make install` installed the pin
    file = tmp_path / "pyproject.toml"
    file.write_text('dependencies = ["llama-cpp-python[server]==0.3.36", "numpy"]\n')
    assert build_llama.pinned_version(file) == "0.3.36"
    file.write_text('a = ["llama-cpp-python==0.3.36"]\nb = ["llama-cpp-python[server]==0.3.30"]\n')
    with pytest.raises(SystemExit, match="expected one pinned"):
        build_llama.pinned_version(file)


def _installed_spec():
    """A spec of the llama-cpp-python version installed in this venv (the record is checked against it)."""
    from importlib.metadata import version

    return build_llama.build_spec(
        "native", version=version("llama-cpp-python"), cpu=["avx2"], machine="x86_64", compiler="cc", user_args=""
    )


def test_install_skips_when_the_venv_holds_the_key_and_reinstalls_when_not(tmp_path, monkeypatch):
    spec = _installed_spec()
    cache = tmp_path / "cache"
    (cache / spec.key).mkdir(parents=True)
    wheel = cache / spec.key / "llama_cpp_python-x-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"")
    commands: list[list[str]] = []
    monkeypatch.setattr(build_llama.subprocess, "run", lambda command, **kw: commands.append(command))
    prefix = tmp_path / "venv"
    prefix.mkdir()

    # a venv with no record gets the cached wheel, over whatever it held, without its dependencies
    assert build_llama.install(spec, prefix, cache)
    assert len(commands) == 1 and commands[0][-1] == str(wheel)
    assert {"--no-deps", "--force-reinstall"} <= set(commands[0])
    assert json.loads((prefix / build_llama.RECORD).read_text())["key"] == spec.key

    # the second time nothing is installed
    assert not build_llama.install(spec, prefix, cache)
    assert len(commands) == 1

    # another CPU's key (the venv moved) installs again
    other = build_llama.build_spec(
        "native", version=spec.version, cpu=["avx2", "avx512f"], machine="x86_64", compiler="cc", user_args=""
    )
    (cache / other.key).mkdir()
    (cache / other.key / wheel.name).write_bytes(b"")
    assert build_llama.install(other, prefix, cache)
    assert len(commands) == 2 and commands[1][-1] == str(cache / other.key / wheel.name)


def test_record_of_another_version_is_not_trusted(tmp_path):
    """llama-cpp-python installed by hand since: the record no longer says what the venv holds."""
    spec = _installed_spec()
    (tmp_path / build_llama.RECORD).write_text(json.dumps({"key": spec.key, "version": "0.0.1"}))
    assert build_llama.installed_key(tmp_path) is None
    (tmp_path / build_llama.RECORD).write_text(json.dumps({"key": spec.key, "version": spec.version}))
    assert build_llama.installed_key(tmp_path) == spec.key


def test_wheel_is_built_with_the_specs_cmake_args_and_without_pips_cache(tmp_path, monkeypatch):
    """pip's wheel cache ignores CMAKE_ARGS: a build that read it could get a wheel of other options."""
    spec = build_llama.build_spec(
        "native", version="0.3.36", cpu=["avx2"], machine="x86_64", compiler="cc", user_args="-DGGML_BLAS=ON"
    )
    calls = []

    def fake_pip(command, env=None, **kw):
        calls.append((command, env))
        folder = Path(command[command.index("--wheel-dir") + 1])
        (folder / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl").write_bytes(b"")

    monkeypatch.setattr(build_llama.subprocess, "run", fake_pip)
    wheel = build_llama.build_wheel(spec, tmp_path)
    ((command, env),) = calls
    assert {"wheel", "--no-deps", "--no-cache-dir"} <= set(command)
    assert command[command.index("--no-binary") + 1] == "llama-cpp-python"
    assert command[-1] == "llama-cpp-python==0.3.36"
    assert env["CMAKE_ARGS"] == "-DGGML_NATIVE=ON -DGGML_BLAS=ON"
    assert wheel.parent == tmp_path / spec.key
    assert json.loads((wheel.parent / "spec.json").read_text())["cpu"] == ["avx2"]
    assert [p.name for p in tmp_path.iterdir()] == [spec.key]  # no scratch folder left behind
    assert build_llama.cached_wheel(spec, tmp_path) == wheel

"""Target descriptors as the compiler sees them: `bimatting targets`, resolution of `host`,
bitserial configuration per architecture, clear errors for unknown targets and missing compilers."""

import json
import os
import platform

import pytest
from click.testing import CliRunner
from tvm.target.codegen import llvm_get_system_cpu

from bimatting.cli import cli
from bimatting.deploy.compiler.schedules import kernel_config_for
from bimatting.deploy.target import check_compiler, resolve
from bimatting.errors import InputError
from bimatting.targets import list_targets, load_target


def test_targets_command_lists_every_toml():
    result = CliRunner().invoke(cli, ["targets"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.strip().splitlines()]
    assert listed == list_targets()
    assert {"host", "rpi4", "jetson-orin"} <= set(listed)


def test_targets_json_has_llvm_and_cross_compiler_fields():
    result = CliRunner().invoke(cli, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["rpi4"]["mtriple"] == "aarch64-linux-gnu"
    assert rows["rpi4"]["mcpu"] == "cortex-a72"
    assert rows["rpi4"]["cross_compiler_package"] == "g++-aarch64-linux-gnu"
    assert "+dotprod" in rows["jetson-orin"]["mattr"]
    assert rows["host"]["cross_compiler"] is None


def test_host_resolves_native_cpu_and_core_count():
    host = resolve("host")
    assert load_target("host")["llvm"]["mcpu"] == "native"  # the TOML stays symbolic
    assert host.llvm["mcpu"] == llvm_get_system_cpu() != "native"
    assert host.llvm["num-cores"] == os.cpu_count()
    assert host.cross_compiler is None
    assert host.tvm_target.attrs["mcpu"] == host.llvm["mcpu"]


@pytest.mark.parametrize(
    "name, word, isa",
    [("rpi4", "uint16", "aarch64"), ("jetson-orin", "uint32", "aarch64"), ("host", "uint64", "x86_64")],
)
def test_bitserial_word_per_architecture(name, word, isa):
    if name == "host" and platform.machine() != "x86_64":
        pytest.skip("the host word size is checked on x86_64 machines")
    target = resolve(name)
    assert target.isa == isa
    assert kernel_config_for(target.tvm_target).word_dtype == word


def test_unknown_target_lists_known_ones():
    with pytest.raises(InputError) as error:
        resolve("raspberry-pi-9")
    for name in list_targets():
        assert name in str(error.value)


def test_unknown_target_on_the_command_line_exits_2(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not used")
    result = CliRunner().invoke(cli, ["compile", str(model), "--target", "pi99", "-o", str(tmp_path / "a.tar")])
    assert result.exit_code == 2
    assert "unknown target 'pi99'" in result.output and "rpi4" in result.output
    assert not (tmp_path / "a.tar").exists()


def test_missing_cross_compiler_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without aarch64-linux-gnu-g++
    with pytest.raises(InputError) as error:
        check_compiler(resolve("rpi4"))
    assert "aarch64-linux-gnu-g++" in str(error.value)
    assert "g++-aarch64-linux-gnu" in str(error.value)

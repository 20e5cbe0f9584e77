"""The benchmarks' machine line tells core generations apart (benchmarks/machine.py)."""

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("machine", Path(__file__).parents[1] / "benchmarks" / "machine.py")
machine = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(machine)


def cpuinfo(vendor: str, name: str, family: int, model: int, flags: str, cpus: int = 2) -> str:
    block = (f"vendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: {name}\n"
             f"flags\t\t: fpu sse2 {flags}\n\n")
    return "".join(f"processor\t: {index}\n{block}" for index in range(cpus))


def test_two_amd_epyc_generations_are_told_apart() -> None:
    zen1 = machine.describe_cpu(cpuinfo("AuthenticAMD", "AMD EPYC", 23, 1, "avx2 fma"))
    zen2 = machine.describe_cpu(cpuinfo("AuthenticAMD", "AMD EPYC", 23, 49, "avx2 fma"))
    assert zen1 == "cpu: AMD EPYC (Zen/Zen+), family 23 model 1, 2 listed; vector: avx2 fma"
    assert "(Zen 2), family 23 model 49" in zen2
    assert "(Zen 4)" in machine.describe_cpu(cpuinfo("AuthenticAMD", "AMD EPYC 9454", 25, 17, "avx2 avx512f"))


def test_intel_cores_list_their_matrix_instructions() -> None:
    line = machine.describe_cpu(cpuinfo("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+", 6, 143,
                                        "avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile", cpus=4))
    assert line == ("cpu: Intel(R) Xeon(R) Platinum 8480+, family 6 model 143, 4 listed; "
                    "vector: avx2 fma avx512f avx512_bf16 amx_tile amx_bf16")


def test_missing_fields_still_give_a_line() -> None:
    assert machine.describe_cpu("processor\t: 0\nmodel name\t: Some CPU\n") == "cpu: Some CPU, 1 listed"
    assert machine.describe_cpu("").startswith("cpu: unknown")

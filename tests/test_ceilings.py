"""A ceilings file (`lmbench ceilings --out`) as `report --ceilings` and `kernels --ceilings` read it: every ceiling
a positive, finite number, and the device it was measured on named."""

import json

import pytest
from click.testing import CliRunner

from lmbench.cli import cli
from lmbench.errors import UsageError
from lmbench.measure.ceilings import applies_to, load, measured_on

GOOD = {"device": "NVIDIA H100 80GB HBM3", "bf16_matmul_tflops": 769.6, "fp16_matmul_tflops": 742.1,
        "tf32_matmul_tflops": 380.3, "fp32_matmul_tflops": 51.2, "bf16_matmul_n": 8192, "copy_gb_per_s": 2996.0}


def _file(tmp_path, payload):
    path = tmp_path / "ceilings.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_a_file_lmbench_ceilings_writes_is_read_as_written(tmp_path):
    assert load(_file(tmp_path, GOOD)) == GOOD


@pytest.mark.parametrize("key", ["fp16_matmul_tflops", "tf32_matmul_tflops", "fp32_matmul_tflops", "bf16_matmul_tflops",
                                 "copy_gb_per_s"])
@pytest.mark.parametrize("value, shown", [("x", '"x"'), (-50, "-50"), (0, "0"), (True, "true"), (None, "null"),
                                          ([], "[]")])
def test_every_ceiling_must_be_a_positive_finite_number(tmp_path, key, value, shown):
    path = _file(tmp_path, {**GOOD, key: value})
    with pytest.raises(UsageError) as refused:
        load(path)
    unit = "GB/s" if key == "copy_gb_per_s" else "TFLOP/s"
    required = key in ("bf16_matmul_tflops", "copy_gb_per_s")
    # The two every file holds keep their message (an older test pins it); the others name the value and what is
    # allowed. fp32 "x" ended report in an internal error (a format code), -50 drew a negative roof, true read as 1.
    assert str(refused.value) == (f"--ceilings {str(path)!r}: needs a positive number {key} (lmbench ceilings --out "
                                  "writes it)" if required else
                                  f"--ceilings {str(path)!r}: {key} is {shown}; allowed: a positive, finite number "
                                  f"of {unit} (as lmbench ceilings --out writes it)")


def test_a_non_finite_ceiling_and_a_file_that_is_no_object_are_refused(tmp_path):
    with pytest.raises(UsageError, match="fp32_matmul_tflops is NaN; allowed: a positive, finite number"):
        load(_file(tmp_path, json.dumps(GOOD)[:-1] + ', "fp32_matmul_tflops": NaN}'))
    with pytest.raises(UsageError, match=r"holds an array, not the JSON object of figures lmbench ceilings --out"):
        load(_file(tmp_path, "[1, 2]"))


def test_a_file_that_does_not_name_its_device_is_refused(tmp_path):
    path = _file(tmp_path, {k: v for k, v in GOOD.items() if k != "device"})
    with pytest.raises(UsageError) as refused:
        load(path)
    assert str(refused.value) == (f"--ceilings {str(path)!r}: needs the name of the device it was measured on, "
                                  "`device` (lmbench ceilings --out writes it): a card's ceilings are no roof for "
                                  "another's runs")


@pytest.mark.parametrize("command", [["report", "{run}"], ["kernels", "--op", "rmsnorm", "--shape", "64x64"]])
def test_the_commands_refuse_a_bad_ceiling_with_exit_2(tmp_path, command):
    path = _file(tmp_path, {**GOOD, "fp32_matmul_tflops": "x"})
    (tmp_path / "run").mkdir()
    args = [a.replace("{run}", str(tmp_path / "run")) for a in command]
    result = CliRunner().invoke(cli, [*args, "--ceilings", str(path)])
    assert result.exit_code == 2
    assert result.stderr == (f"lmbench: error: --ceilings {str(path)!r}: fp32_matmul_tflops is \"x\"; allowed: a "
                             "positive, finite number of TFLOP/s (as lmbench ceilings --out writes it)\n")


def test_the_device_a_record_ran_on_as_lmbench_ceilings_names_it():
    h100 = {"metrics": {"device_names": ["NVIDIA H100 80GB HBM3"]}, "env": {"device": {"name": "ignored"}}}
    older = {"metrics": {}, "env": {"device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}}}
    cpu = {"metrics": {"device_names": []}, "env": {"device": {"type": "cpu", "name": "Intel Xeon"}}}
    mixed = {"metrics": {"device_names": ["NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"]}}
    assert [measured_on(r) for r in (h100, older, cpu, mixed, {"env": None})] == [
        "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "a CPU (Intel Xeon)",
        "NVIDIA A100-SXM4-80GB, NVIDIA H100 80GB HBM3", "an unrecorded device"]
    assert [applies_to(GOOD, r) for r in (h100, older, cpu, mixed)] == [True, True, False, False]

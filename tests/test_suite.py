from pathlib import Path

import pytest

from lmbench.errors import SuiteError
from lmbench.plan import suite as suites


def write(tmp_path: Path, text: str, name: str = "s.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_matrix_is_a_cartesian_product_over_defaults_minus_excludes(tmp_path):
    s = suites.load(write(tmp_path, """
name = "t"
description = "d"
[defaults]
model = "tiny-gpt2"
steps = 3
[matrix]
batch_size = [1, 2, 4]
precision = ["fp32", "bf16"]
[[exclude]]
batch_size = 4
precision = "bf16"
[[exclude]]
batch_size = [1]
precision = ["fp32"]
"""))
    planned = s.expand()
    pairs = [(p.config.batch_size, p.config.precision) for p in planned]
    assert pairs == [(1, "bf16"), (2, "fp32"), (2, "bf16"), (4, "fp32")]
    assert all(p.config.steps == 3 and p.conflict is None for p in planned)
    assert s.size == 6


def test_overrides_replace_defaults_or_make_an_axis():
    s = suites.load("smoke").with_overrides(suites.parse_overrides(["batch_size=8,16", "steps=3", "model=tiny-gpt2"]))
    planned = s.expand()
    assert {(p.config.batch_size, p.config.steps, p.config.model) for p in planned} == {
        (8, 3, "tiny-gpt2"), (16, 3, "tiny-gpt2")}
    assert len(planned) == 4  # x precision fp32, amp-bf16


def test_conflicting_combinations_become_rows_unless_none_can_run(tmp_path):
    text = """
[matrix]
model = ["tiny-gpt2", "gpt2-124m"]
seq_len = [1024]
"""
    planned = suites.load(write(tmp_path, text)).expand()
    assert [p.conflict is None for p in planned] == [False, True]
    assert planned[0].conflict.startswith("seq_len=1024 exceeds the 256 positions of model tiny-gpt2")
    with pytest.raises(SuiteError, match=r"s\.toml: seq_len=4096 exceeds the 256 positions of model tiny-gpt2"):
        suites.load(write(tmp_path, "[defaults]\nseq_len = 4096\n")).expand()


@pytest.mark.parametrize(("text", "message"), [
    ("name = [", "malformed TOML"),
    ("", "an empty suite file; give at least a [defaults] or [matrix] table"),
    ("# only a comment\n", "an empty suite file"),
    ("name = 'x'\ndescription = 'y'", "a suite file with a name and description only; give at least a [defaults]"),
    ("[matrix]\nbatch_size=[1, 2]\n[[exclude]]\n", "an empty [[exclude]] rule would exclude every configuration"),
    ("[defaults]\nbatch_size = 9223372036854775807", "batch_size=9223372036854775807 is past what any model trains "
                                                      "on one device (allowed: up to 1,048,576); a typo?"),
    ("nmae = 'x'", "unknown key 'nmae'; allowed: name, description, defaults, matrix, exclude"),
    ("[defaults]\nbatch_size = 0", "batch_size=0 must be a positive integer"),
    ("[matrix]\nprecision = ['fp32', 'fp64']", "[matrix]: precision='fp64' is not one of: fp32, tf32"),
    ("[matrix]\nbatchsize = [1]", "[matrix]: unknown axis 'batchsize'; allowed: model, batch_size"),
    ("[matrix]\nbatch_size = []", "[matrix] batch_size is an empty list"),
    ("exclude = 3", "'exclude' must be an array of tables"),
    ("[matrix]\nbatch_size=[1]\n[[exclude]]\nbatch_size=1", "the matrix is empty after [[exclude]]"),
])
def test_bad_suite_files_name_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as err:
        suites.load(path).expand()
    assert str(err.value).startswith(path + ":")
    assert message in str(err.value)


COMMENTED = """
name = "mine"
[defaults]
# model = "gpt2-124m"
[matrix]
# precision = ["fp32", "bf16"]
"""


@pytest.mark.parametrize("text", [COMMENTED, "[defaults]\n# steps = 3\n", "[matrix]\n"])
def test_tables_with_every_entry_commented_out_are_refused_unless_set_gives_an_axis(tmp_path, text):
    """They ran lmbench's default configuration under the suite's name, without a word (trial 100, commented.toml);
    --device alone gives no axis of the suite's own."""
    path = write(tmp_path, text)
    name = "mine" if "mine" in text else "s"
    with pytest.raises(SuiteError) as err:
        suites.load(path).with_overrides(suites.parse_overrides(["device=cpu"]), flag="--device").expand()
    assert str(err.value) == (f"{path}: no axis in [defaults] or [matrix] (every entry commented out?): it would run "
                              f"lmbench's default configuration alone, as suite {name!r}; give an axis in the file, "
                              "or with --set")
    row, = suites.load(path).with_overrides(suites.parse_overrides(["steps=3"])).expand()
    assert row.config.steps == 3


def test_unknown_suite_lists_the_builtin_ones():
    with pytest.raises(SuiteError,
                       match=r"^unknown suite 'nope'; available: batch-sweep, ci, convergence, fp16, fp8, kernels"):
        suites.load("nope")
    with pytest.raises(SuiteError, match=r"^suite file 'missing.toml' does not exist$"):
        suites.load("missing.toml")
    # A built-in's name with .toml (a new user's `--suite smoke.toml`) names the built-in it may have meant.
    with pytest.raises(SuiteError) as err:
        suites.load("smoke.toml")
    assert str(err.value) == ("suite file 'smoke.toml' does not exist; did you mean the built-in --suite smoke? "
                              f"built-in suites: {', '.join(suites.builtin_names())}")


def test_bad_overrides():
    with pytest.raises(SuiteError, match=r"^--set 'batch_size': expected KEY=VALUE"):
        suites.parse_overrides(["batch_size"])
    with pytest.raises(SuiteError, match=r"^--set 'batch_size=1,x': batch_size='x' is not an integer$"):
        suites.parse_overrides(["batch_size=1,x"])


@pytest.mark.parametrize("name", suites.builtin_names())
def test_every_builtin_suite_parses_and_expands(name):
    s = suites.load(name)
    assert s.description
    assert s.expand()


def test_required_suites_ship():
    assert {"smoke", "fp16", "precision", "batch-sweep", "memory", "kernels", "parallel", "ci", "fp8",
            "convergence"} <= set(
        suites.builtin_names())


@pytest.mark.parametrize("values", [[False, True], [True, False]])
def test_a_profile_matrix_is_one_profiled_configuration(values):
    """profile leaves the key as it is (its steps come after the window): profile=[false, true] is one configuration,
    profiled, in either order (before, the first point stood and the other went silently)."""
    from lmbench.plan.suite import parse

    suite = parse(f"[defaults]\nmodel = 'tiny-gpt2'\n[matrix]\nprofile = {str(values).lower()}\n", source="t.toml")
    row, = suite.expand()
    assert row.config.profile is True


def test_two_timeouts_on_one_configuration_are_refused():
    """A new user's `--set timeout_s=1,120` planned one configuration, without a word: the two values share a key.
    Values that other axes tell apart (a timeout row beside an ok one, tests/test_run_e2e.py) stay allowed."""
    both = suites.load("smoke").with_overrides(suites.parse_overrides(["timeout_s=1,120"]))
    with pytest.raises(SuiteError, match=r"^builtin:smoke with --set timeout_s: timeout_s=1 and 120 fall on one "
                                         r"configuration \(tiny-"):
        both.expand()
    apart = suites.parse("name = 's'\n[defaults]\nmodel = 'tiny-gpt2'\n[matrix]\nseed = [0, 1]\n"
                         "timeout_s = [120.0, 0.5]\n[[exclude]]\nseed = 0\ntimeout_s = 0.5\n[[exclude]]\nseed = 1\n"
                         "timeout_s = 120.0\n", source="s.toml")
    assert sorted(row.config.timeout_s for row in apart.expand()) == [0.5, 120.0]


def test_a_bare_name_is_the_built_in_suite_whatever_the_directory_holds(tmp_path, monkeypatch):
    """A file called `ci` in the directory ran instead of the built-in ci suite (a reviewer); ./ci names it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ci").write_text("not toml [")
    assert suites.load("ci").source == "builtin:ci" and suites.as_recorded("ci") == "ci"
    with pytest.raises(SuiteError, match="malformed TOML"):
        suites.load("./ci")


def test_a_file_stem_with_nothing_safe_names_the_suite_suite(tmp_path):
    assert suites.load(write(tmp_path, "[defaults]\nsteps = 2\n", name="é.toml")).name == "suite"


def test_numbers_on_the_command_line_are_ascii_digits():
    for raw in ("\u0664", "1_000"):
        with pytest.raises(SuiteError, match=r"is not an integer \(ASCII digits, no '_'\)"):
            suites.parse_overrides([f"batch_size={raw}"])


def test_an_error_of_the_plan_names_device_as_the_option_that_gave_it():
    """`--device cpu` read as `--set device` in a plan's errors (a new user's docs check)."""
    suite = suites.load("smoke").with_overrides({"seq_len": [64]}).with_overrides({"device": ["cpu"]}, flag="--device")
    assert suite.where == "builtin:smoke with --set seq_len and --device"
    assert suites.load("smoke").with_overrides({"device": ["cpu"]}, flag="--device").where == (
        "builtin:smoke with --device")
    assert suite.defaults["device"] == "cpu"

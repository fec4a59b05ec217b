"""Every command is reachable the documented ways: `python -m minivit.<cmd>`, the example
scripts, and a console script in setup.py; each answers --help."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

COMMANDS = {   # console script -> (module with entry(), python -m target or example script)
    "minivit-train": ("minivit.cli.train", ["-m", "minivit.train"]),
    "minivit-finetune": ("minivit.cli.finetune", ["examples/finetune.py"]),
    "minivit-evaluate": ("minivit.cli.evaluate", ["-m", "minivit.evaluate"]),
    "minivit-predict": ("minivit.cli.predict", ["-m", "minivit.predict"]),
    "minivit-embed": ("minivit.cli.embed", ["-m", "minivit.embed"]),
    "minivit-io": ("minivit.cli.io", ["-m", "minivit.io"]),
    "minivit-attention": ("minivit.cli.attention", ["examples/attention_maps.py"]),
}


def test_setup_declares_every_console_script():
    setup = open(os.path.join(ROOT, "setup.py")).read()
    declared = dict(re.findall(r'"(minivit-[a-z]+)=([\w.]+):entry"', setup))
    assert declared == {k: v[0] for k, v in COMMANDS.items()}


def help_of_every_way(tmp_path) -> list:
    """(expected usage name, command line) of --help for every command run every way: as its
    python -m module or example script, as pip's console script (a file named minivit-<cmd>
    that imports entry) and as python -m minivit.cli.<cmd>."""
    runs = []
    for script, (module, args) in sorted(COMMANDS.items()):
        exe = tmp_path / script
        exe.write_text(f"import sys\nfrom {module} import entry\nsys.exit(entry())\n")
        runs += [(f"python {' '.join(args)}", [*args]), (script, [str(exe)]),
                 (f"python -m {module}", ["-m", module])]
    return runs


def test_help_names_each_command_as_it_was_run(tmp_path):
    """--help works every way a command can be run, and its usage line names the command the
    way it was run. The processes run side by side (each is mostly Python start-up)."""
    runs = help_of_every_way(tmp_path)
    procs = [subprocess.Popen([sys.executable, *cmd, "--help"], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": ROOT}) for _, cmd in runs]
    for (name, cmd), p in zip(runs, procs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, (cmd, err)
        assert out.startswith(f"usage: {name} ") and not err, (cmd, out[:80], err)


def test_bad_flag_is_one_error_line():
    out = subprocess.run([sys.executable, "examples/train_mnist.py", "--procs", "1", "--workers", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == ("python examples/train_mnist.py: error: argument --workers: takes an "
                        "integer >= 1, got '0'") and len(lines) == 2, lines


def test_auto_procs_splits_the_batch_evenly_with_enough_images_each():
    from minivit.parallel.launch import auto_procs
    assert auto_procs(2, 128) == 2
    assert auto_procs(64, 128) == 8            # 16 images each, not 2
    assert auto_procs(6, 128) == 4             # 128 is not divisible by 6 or 5
    assert auto_procs(2, 24) == 1 and auto_procs(1, 128) == 1


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_every_command_has_a_python_m_module_and_version(script, capsys):
    """`python -m minivit.<command>` runs the command (the module, or a package's __main__,
    calls the command's entry), and --version prints minivit's version."""
    import importlib
    import importlib.util

    import minivit
    name = "minivit." + script.removeprefix("minivit-")
    spec = importlib.util.find_spec(name)
    if spec.submodule_search_locations:                   # a package: python -m runs __main__
        spec = importlib.util.find_spec(name + ".__main__")
    source = open(spec.origin).read()
    assert f"from {COMMANDS[script][0]} import entry" in source and "entry()" in source
    cli = importlib.import_module(COMMANDS[script][0])
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"minivit {minivit.__version__}\n"


def test_a_closed_pipe_ends_quietly_and_warnings_are_one_line():
    code = ("import warnings\nfrom minivit.cli import run\n"
            "def main(argv):\n"
            "    warnings.warn('the source has no labels')\n"
            "    for i in range(200000):\n"
            "        print('x' * 60)\n"
            "run(main)\n")
    p = subprocess.run(f"{sys.executable} -c \"{code}\" | head -1", shell=True, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.stdout == "x" * 60 + "\n"
    assert p.stderr == "warning: the source has no labels\n", p.stderr   # no BrokenPipeError


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    """cli.run turns only minivit's own errors (and the OS's) into one `error:` line: a plain
    ValueError, TypeError or KeyError from inside minivit is a bug, shown with its traceback
    and a line asking to report it."""
    from minivit.cli import REPORT, run
    from minivit.errors import Diverged, Unavailable, UserError, UserTypeError
    from minivit.files import FileFormatError
    monkeypatch.delenv("MINIVIT_DEBUG", raising=False)

    def raising(error):
        def main(argv):
            raise error
        return main
    for error in (UserError("bad value; do this"), UserTypeError("bad kind; do this"),
                  Unavailable("no GPU; install that"), Diverged("the loss became nan; lower"),
                  FileFormatError("f.npz: damaged; fix it"), PermissionError(13, "denied", "p")):
        with pytest.raises(SystemExit) as e:
            run(raising(error))
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    for bug in (ValueError("a plain one"), TypeError("unhashable type: 'list'"), KeyError("k")):
        with pytest.raises(SystemExit) as e:
            run(raising(bug))
        err = capsys.readouterr().err
        assert e.value.code == 1 and "Traceback (most recent call last)" in err, err
        assert err.rstrip().endswith(REPORT) and "error: " not in err
    with pytest.raises(SystemExit) as e:
        run(raising(MemoryError()))
    assert e.value.code == 2 and "out of memory" in capsys.readouterr().err

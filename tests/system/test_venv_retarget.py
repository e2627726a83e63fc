"""A venv built beside its final place, made ready to be renamed there (upgrades build the
new software while the old one runs)."""

import os
import subprocess
import sys

from isidorus.system.packages import venv_retarget


def test_a_venv_renamed_after_retarget_runs_its_scripts(tmp_path):
    built, final = tmp_path / "env.new", tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", built], check=True)
    script = built / "bin" / "hello"
    script.write_text(f"#!{built}/bin/python\nimport sys\nprint(sys.prefix)\n")
    script.chmod(0o755)
    (built / "bin" / "hello.new2").write_text(f"#!{built}2/bin/python\n")  # another path

    venv_retarget(str(built), str(final))
    os.rename(built, final)

    out = subprocess.run([final / "bin" / "hello"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(final)
    assert oct((final / "bin" / "hello").stat().st_mode & 0o777) == "0o755"
    assert (final / "bin" / "hello.new2").read_text() == f"#!{built}2/bin/python\n"
    assert str(built) not in (final / "bin" / "activate").read_text()
    assert (
        f"{final}\n" in (final / "pyvenv.cfg").read_text()
        or "command" not in (final / "pyvenv.cfg").read_text()
    )

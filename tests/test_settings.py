"""Where settings come from: defaults, the configuration files, then the environment."""

import pytest

from isidorus import settings
from isidorus.errors import UsageError


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0", False), ("false", False), ("No", False), ("off", False), ("1", True), (" yes", True)],
)
def test_a_true_or_false_setting_from_the_environment(tmp_path, raw, value):
    env = {"ISIDORUS_CONFIG": str(tmp_path / "none.toml"), "ISIDORUS_SERVE_CPU_AFFINITY": raw}
    assert settings.load(environ=env)["serve_cpu_affinity"] is value


def test_a_bad_true_or_false_is_a_one_line_error(tmp_path):
    env = {"ISIDORUS_CONFIG": str(tmp_path / "none.toml"), "ISIDORUS_SERVE_CPU_AFFINITY": "maybe"}
    with pytest.raises(UsageError, match="ISIDORUS_SERVE_CPU_AFFINITY='maybe' is not a valid bool"):
        settings.load(environ=env)
    config = tmp_path / "isidorus.toml"
    config.write_text('serve_cpu_affinity = "false"\n')  # a string, which Python finds true
    with pytest.raises(UsageError, match="write true or false"):
        settings.load(environ={"ISIDORUS_CONFIG": str(config)})
    config.write_text("serve_cpu_affinity = false\n")
    assert settings.load(environ={"ISIDORUS_CONFIG": str(config)})["serve_cpu_affinity"] is False


def test_the_environment_wins_over_the_files(tmp_path):
    config = tmp_path / "isidorus.toml"
    config.write_text("backup_threads = 3\nserve_cpu_affinity = false\n")
    (tmp_path / "isidorus.toml.d").mkdir()
    (tmp_path / "isidorus.toml.d" / "10-more.toml").write_text("backup_threads = 5\n")
    env = {"ISIDORUS_CONFIG": str(config)}
    assert settings.load(environ=env)["backup_threads"] == 5
    env["ISIDORUS_BACKUP_THREADS"] = "7"
    env["ISIDORUS_SERVE_CPU_AFFINITY"] = "on"
    found = settings.load(environ=env)
    assert found["backup_threads"] == 7 and found["serve_cpu_affinity"] is True


def test_the_folder_applies_in_name_order_and_only_its_toml_files(tmp_path):
    config = tmp_path / "isidorus.toml"
    folder = tmp_path / "isidorus.toml.d"
    folder.mkdir()
    (folder / "20-late.toml").write_text("backup_threads = 9\n")
    (folder / "10-early.toml").write_text("backup_threads = 4\n")
    (folder / ".30-hidden.toml").write_text("backup_threads = 1\n")  # an editor's leftover
    (folder / "40-notes.txt").write_text("backup_threads = 2\n")
    env = {"ISIDORUS_CONFIG": str(config)}  # no main file: the folder still applies
    assert [f for f, _doc in settings.documents(str(config))] == [
        str(folder / "10-early.toml"),
        str(folder / "20-late.toml"),
    ]
    assert settings.load(environ=env)["backup_threads"] == 9
    (folder / "20-late.toml").write_text("backup_threads = \n")
    with pytest.raises(UsageError, match="cannot read the configuration .*20-late.toml"):
        settings.load(environ=env)

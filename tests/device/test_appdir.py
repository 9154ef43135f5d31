import os

import appdir
from devtest import make_tmpdir


def install(root, version):
    for d in (root + "/" + version, root + "/" + version + "/ghnode"):
        try:
            os.mkdir(d)
        except OSError:
            pass
    with open(root + "/" + version + "/ghnode/__init__.py", "w") as f:
        f.write("")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_nothing_installed_runs_the_default_path():
    assert appdir.choose(make_tmpdir("app")) is None


def test_active_version_is_chosen():
    root = make_tmpdir("app")
    install(root, "1.0.0")
    write(root + "/active", "1.0.0\n")
    assert appdir.choose(root) == root + "/1.0.0"
    assert appdir.running(root) == "1.0.0"


def test_active_version_that_is_missing_is_not_chosen():
    root = make_tmpdir("app")
    write(root + "/active", "9.9.9")
    assert appdir.choose(root) is None


def test_trial_boots_once_and_confirm_makes_it_active():
    root = make_tmpdir("app")
    install(root, "1.0.0")
    install(root, "1.1.0")
    write(root + "/active", "1.0.0")
    write(root + "/trial", "1.1.0")
    assert appdir.choose(root) == root + "/1.1.0"
    assert appdir.running(root) == "1.1.0"
    assert appdir.confirm(root)
    assert appdir.choose(root) == root + "/1.1.0"
    assert appdir.running(root) == "1.1.0"
    assert not appdir.confirm(root)


def test_unconfirmed_trial_rolls_back_on_the_next_boot():
    root = make_tmpdir("app")
    install(root, "1.0.0")
    install(root, "1.1.0")
    write(root + "/active", "1.0.0")
    write(root + "/trial", "1.1.0")
    assert appdir.choose(root) == root + "/1.1.0"
    # The trial firmware crashed before confirming: the next boot runs the old version.
    assert appdir.choose(root) == root + "/1.0.0"
    assert appdir._read(root + "/rolled_back") == "1.1.0"
    assert appdir.choose(root) == root + "/1.0.0"


def test_incomplete_trial_is_never_booted():
    root = make_tmpdir("app")
    install(root, "1.0.0")
    write(root + "/active", "1.0.0")
    write(root + "/trial", "2.0.0")
    assert appdir.choose(root) == root + "/1.0.0"

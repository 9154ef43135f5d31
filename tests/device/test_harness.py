from devtest import make_tmpdir, raises
import os


def test_tmpdir_is_new_and_writable():
    a = make_tmpdir()
    b = make_tmpdir()
    assert a != b
    with open(a + "/f", "w") as f:
        f.write("x")
    assert os.listdir(a) == ["f"]


def test_raises_reports_missing_exception():
    raises(ValueError, int, "x")
    raises(AssertionError, raises, ValueError, int, "1")

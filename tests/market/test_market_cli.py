"""`gridhive ctl market ...`: order-book depth, and what `serve` refuses before it starts. The
commands against a running ledger are tested in tests/ledger/test_market_on_ledger.py."""
from typer.testing import CliRunner

from gridhive.market import book_depth
from gridhive.market.cli import app
from market_fixtures import bid, offer

runner = CliRunner()


def test_book_depth_accumulates_towards_the_better_prices():
    levels = book_depth([bid("b1", "x", 100, 20), bid("b2", "y", 50, 10),
                         offer("o1", "z", 70, 10), offer("o2", "w", 30, 15)])
    assert [tuple(level) for level in levels] == [(10, 50, 70, 150, 70), (15, 0, 30, 100, 100),
                                                  (20, 100, 0, 100, 100)]


def test_serve_names_a_bad_operator_key_and_show_a_missing_ledger(tmp_path):
    (tmp_path / "operator.key").write_text("not hex\n")
    bad = runner.invoke(app, ["serve", "--ledger", "127.0.0.1:9", "--operator-key", str(tmp_path / "operator.key")])
    assert bad.exit_code == 2 and "--operator-key" in bad.output
    missing = runner.invoke(app, ["serve", "--operator-key", str(tmp_path / "nope.key")])
    assert missing.exit_code == 2 and "--operator-key" in missing.output
    nobody = runner.invoke(app, ["show", "--ledger", "127.0.0.1:9"])
    assert nobody.exit_code == 2 and "no validator answers" in nobody.output

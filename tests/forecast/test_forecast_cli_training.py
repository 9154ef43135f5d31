"""`gridhive forecast` commands (training needs the `train` extra and is checked by rebuilding the
shipped model byte for byte: see MODEL_CARD.md)."""
import json

from typer.testing import CliRunner

from gridhive.forecast.cli import app


def test_evaluate_prints_the_heldout_report_as_json():
    result = CliRunner().invoke(app, ["evaluate", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["load"]["mae_skill_pct"] > 0 and report["days"] > 0

"""The controller's market loop (gridhive.market.loop): what is due when, by chain time. The loop
against real validator processes is tests/ledger/test_market_on_ledger.py."""
from gridhive.ledger.state import DEFAULT_PARAMS
from gridhive.market.loop import Due, due

PARAMS = {**DEFAULT_PARAMS, "interval_s": 900, "gate_closure_s": 300, "reading_grace_s": 600}
T = 1_717_200_000                     # an interval start, s


def test_clearing_is_due_at_gate_closure_and_settlement_after_the_grace():
    status = {T: "open", T + 900: "cleared", T + 1800: "open", T + 86_400: "open"}
    asked = []

    def status_of(start):
        asked.append(start)
        return status[start]

    gate_ms, settles_ms = (T - 300) * 1000, (T + 900 + 900 + 600) * 1000
    assert due(sorted(status), status_of, gate_ms - 1, PARAMS) == []
    assert asked == []                                  # not even read before its gate
    assert due(sorted(status), status_of, gate_ms, PARAMS) == [Due("clearing", T)]
    assert due(sorted(status), status_of, settles_ms - 1, PARAMS) == [Due("clearing", T), Due("clearing", T + 1800)]
    assert Due("settlement", T + 900) in due(sorted(status), status_of, settles_ms, PARAMS)
    assert T + 86_400 not in asked                      # a day ahead: never asked
    status[T + 900] = "settled"
    assert Due("settlement", T + 900) not in due(sorted(status), status_of, settles_ms, PARAMS)

"""ghnode.measure.EnergyCounter: import/export energy integration and persistence."""
import json

from devtest import raises
from ghnode.measure import EnergyCounter


def test_sub_wh_steps_add_up_exactly():
    e = EnergyCounter(2)
    for _ in range(3600):
        e.add(0, 1, 1000)  # 1 W for 1 s, 3600 times
    assert e.energy_wh(0) == (1, 0) and e.import_mwh[0] == 1000
    for _ in range(7):
        e.add(1, -0.1, 200)  # tiny export steps, each far below 1 mWh
    assert e.to_dict()["rem_uj"][1] == [0, 140_000]
    assert e.energy_wh(1) == (0, 0)


def test_import_and_export_are_separate_and_never_decrease():
    e = EnergyCounter(1)
    e.add(0, 2300.4, 3_600_000 // 60)  # capped at the 60 s gap
    e.add(0, -1500, 60_000)
    e.add(0, 800, -5)  # clock went backwards: ignored
    e.add(0, 0, 1000)
    imp, exp = e.import_mwh[0], e.export_mwh[0]
    assert imp == 2300400 * 60_000 // 3_600_000 and exp == 25_000
    e.add(0, -1500, 60_000)
    assert e.import_mwh[0] == imp and e.export_mwh[0] == 50_000
    assert e.energy_wh(0) == (imp // 1000, 50)


def test_persists_through_json():
    e = EnergyCounter(3)
    e.add(0, 1234.5, 777)
    e.add(2, -99, 12_345)
    back = EnergyCounter.from_dict(json.loads(json.dumps(e.to_dict())))
    assert back.to_dict() == e.to_dict()
    back.add(0, 1234.5, 777)
    e.add(0, 1234.5, 777)
    assert back.to_dict() == e.to_dict()


def test_rejects_what_is_not_a_saved_counter():
    good = EnergyCounter(2).to_dict()
    raises(ValueError, EnergyCounter.from_dict, {})
    raises(ValueError, EnergyCounter.from_dict, None)
    for key, bad in (("import_mwh", [0]), ("export_mwh", [0, -1]), ("rem_uj", [[0, 0], [0, 3_600_000]]),
                     ("import_mwh", [0, 1.5]), ("rem_uj", [[0], [0, 0]])):
        d = dict(good)
        d[key] = bad
        raises(ValueError, EnergyCounter.from_dict, d)

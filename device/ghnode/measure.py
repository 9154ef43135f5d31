"""Signal processing for one window of CT (and optional voltage) samples; runs after sampler.sample().

Per window: DC offset removal (the mean), trimming to whole mains cycles between rising zero crossings
(hysteresis; fractional end weights, so a window of e.g. 10.4 cycles at 49.7 Hz stays accurate), RMS
per channel, and with a voltage channel real power with phase compensation (the voltage is
interpolated to the instant each current sample stands for, which removes the sequential-read skew
and the sensors' phase errors, like EmonLib's PHASECAL but with the skew measured, not calibrated).
Units: ADC samples in uV; outputs are ints for the wire: mA, mV, W, VA, power factor x1000.
"""
import math
from array import array

from ghnode.sampler import sample

# The ESP32 ADC at 11 dB attenuation is linear only between ~150 and ~2450 mV (read_uv()). The bias
# point and the headroom check live here and nowhere else.
ADC_LINEAR_MIN_UV = 150_000
ADC_LINEAR_MAX_UV = 2_450_000
ADC_BIAS_UV = (ADC_LINEAR_MIN_UV + ADC_LINEAR_MAX_UV) // 2  # equal headroom both ways: 1.3 V
# A connected input always shows a few mV of ADC noise; a span of at most one read_uv() step (1 mV)
# means a pinned input.
OPEN_P2P_UV = 1000
HYSTERESIS_MIN_UV = 3000  # above read_uv()'s 1 mV steps and typical noise

IMPORT, EXPORT, UNKNOWN = 1, -1, 0  # direction of a channel's real power


def headroom_uv(bias_uv=ADC_BIAS_UV):
    """Peak signal swing (uV) a channel biased at bias_uv takes before it leaves the linear range."""
    return min(bias_uv - ADC_LINEAR_MIN_UV, ADC_LINEAR_MAX_UV - bias_uv)


def adc_status(lo_uv, hi_uv, n_out, n):
    """(open, clipped) of one window from its range and the count of samples outside the linear range.

    Open: pinned (no noise at all) or mostly outside the linear range (a floating input at a rail).
    Clipped: a real signal whose peaks leave the linear range, so its RMS reads low.
    """
    is_open = hi_uv - lo_uv <= OPEN_P2P_UV or 2 * n_out > n
    return is_open, not is_open and n_out > 0


class CTCal:
    """Calibration of one CT input.

    a_per_v:   primary amps per ADC volt. Default: SCT-013-030 (30 A : 1 V) into a 0.6 divider, 50 A/V,
               so 120 % of rating peaks at 1.02 V, inside headroom_uv() at the default bias.
    phase_deg: the CT's phase lead over its primary current at the fundamental.
    offset_ma: RMS of the channel's noise, subtracted in quadrature (noise adds that way).
    floor_ma:  below this the channel reads 0 (default 1 % of rating_a).
    """

    def __init__(self, a_per_v=50.0, phase_deg=0.0, offset_ma=0, floor_ma=None, rating_a=30):
        self.a_per_v = a_per_v
        self.phase_deg = phase_deg
        self.offset_ma = offset_ma
        self.rating_a = rating_a
        self.floor_ma = rating_a * 10 if floor_ma is None else floor_ma


class VTCal:
    """Calibration of the AC voltage input (e.g. a 9 V AC adapter and a divider).

    v_per_v:   mains volts per ADC volt (230 V -> 0.6 V RMS: 383).
    phase_deg: the transformer's phase lead over the mains voltage.
    offset_mv: noise RMS subtracted in quadrature; floor_mv: below this the voltage counts as absent.
    """

    def __init__(self, v_per_v=383.0, phase_deg=0.0, offset_mv=0, floor_mv=50_000):
        self.v_per_v = v_per_v
        self.phase_deg = phase_deg
        self.offset_mv = offset_mv
        self.floor_mv = floor_mv


def _scan(buf, n):
    """Mean, min, max and the number of samples outside the ADC's linear range, in one pass."""
    total = 0
    lo = hi = buf[0]
    out = 0
    for k in range(n):
        x = buf[k]
        total += x
        if x < lo:
            lo = x
        elif x > hi:
            hi = x
        if x < ADC_LINEAR_MIN_UV or x > ADC_LINEAR_MAX_UV:
            out += 1
    return total / n, lo, hi, out


def _crossings(buf, n, mid, hyst, min_gap):
    """Fractional sample indices of the rising zero crossings of buf - mid.

    A crossing counts once the signal has been below -hyst and then rises above +hyst (noise near
    zero cannot fake one), and only min_gap samples after the previous (harmonics cannot either).
    """
    out = []
    armed = False
    zc = -1.0
    prev = buf[0] - mid
    for k in range(1, n):
        x = buf[k] - mid
        if x < -hyst:
            armed = True
            zc = -1.0
        elif armed:
            if prev < 0 <= x:
                zc = k - 1 + prev / (prev - x)
            if x > hyst and zc >= 0:
                if not out or zc - out[-1] >= min_gap:
                    out.append(zc)
                armed = False
        prev = x
    return out


def _window(start, end):
    """Sample weights for the span [start, end] (fractional indices); sample k covers [k-.5, k+.5).

    Returns (i0, w0, i1, w1, total): samples i0 and i1 count with weights w0 and w1, those between
    with weight 1, and the weights sum to total = end - start.
    """
    i0 = int(start + 0.5)
    i1 = int(end + 0.5)
    return i0, i0 + 0.5 - start, i1, end + 0.5 - i1, end - start


def _moments(buf, win, m0):
    """Weighted means of d and d*d over the window, where d = sample - m0."""
    i0, w0, i1, w1, total = win
    s1 = s2 = 0.0
    for k in range(i0 + 1, i1):
        d = buf[k] - m0
        s1 += d
        s2 += d * d
    a = buf[i0] - m0
    b = buf[i1] - m0
    s1 += w0 * a + w1 * b
    s2 += w0 * a * a + w1 * b * b
    return s1 / total, s2 / total


def _cross_mean(ibuf, vbuf, n, win, mi, mv, shift):
    """Weighted mean over the window of (i[k] - mi) * (v(k + shift) - mv).

    v between samples by 4-point (cubic) Lagrange interpolation: linear interpolation would lose
    up to 0.3 % of the power at 40 samples per cycle.
    """
    j = math.floor(shift)
    a = shift - j
    j = int(j)
    c0 = -a * (a - 1) * (a - 2) / 6
    c1 = (a + 1) * (a - 1) * (a - 2) / 2
    c2 = -(a + 1) * a * (a - 2) / 2
    c3 = (a + 1) * a * (a - 1) / 6
    i0, w0, i1, w1, total = win
    top = n - 3
    s = 0.0
    for k in range(i0, i1 + 1):
        b = k + j
        if b < 1:  # the window's edges may reach past the buffer by a sample or two
            b = 1
        elif b > top:
            b = top
        p = (ibuf[k] - mi) * (c0 * vbuf[b - 1] + c1 * vbuf[b] + c2 * vbuf[b + 1] + c3 * vbuf[b + 2] - mv)
        if k == i0:
            p *= w0
        elif k == i1:
            p *= w1
        s += p
    return s / total


def _milli(var_uv2, gain, offset):
    """RMS in milli-units (mA, mV) from a variance in uV^2, with the noise offset removed."""
    rms = math.sqrt(max(var_uv2, 0.0)) * gain / 1000
    return math.sqrt(max(rms * rms - offset * offset, 0.0))


class Meter:
    """Samples and analyses one window for a set of CTs and an optional voltage channel.

    Read order (reads, buffers): the voltage channel first if there is one, then the CTs.
    Default window: 10 whole cycles (200 ms at 50 Hz) at 64 samples per cycle (3.2 kS/s per channel),
    sampled over cycles + 1.5 cycles so that the whole cycles fit wherever the window starts.
    freq_hz is the nominal mains frequency (50 or 60); the measured one is used where there is one.
    """

    def __init__(self, cts, vt=None, freq_hz=50, cycles=10, samples_per_cycle=64, nominal_v=230):
        self.cts = list(cts)
        self.vt = vt
        self.freq_hz = freq_hz
        self.cycles = cycles
        self.nominal_v = nominal_v
        self.period_us = int(1e6 / (freq_hz * samples_per_cycle) + 0.5)
        self.n = int((cycles + 1.5) * samples_per_cycle + 0.5)
        nch = len(self.cts) + (1 if vt else 0)
        self.bufs = tuple(array("i", [0] * self.n) for _ in range(nch))
        self.stats = array("i", [0, 0])

    def measure(self, reads, clock):
        """Sample one window through `reads` (bound read_uv methods, in read order) and analyse it."""
        sample(reads, self.bufs, self.n, self.period_us, clock, self.stats)
        return self.analyse(self.bufs, self.n, self.stats)

    def _window_of(self, buf, n, scan, dt_us):
        """(window, cycles) trimmed to whole cycles of buf's own zero crossings, else the whole buffer."""
        m0, lo, hi, _ = scan
        min_gap = 0.75e6 / (self.freq_hz * dt_us)
        zc = _crossings(buf, n, m0, max(HYSTERESIS_MIN_UV, (hi - lo) / 20), min_gap)
        if len(zc) < 2:
            return (0, 1.0, n - 1, 1.0, n), 0
        last = min(len(zc) - 1, self.cycles)
        return _window(zc[0], zc[last]), last

    def analyse(self, bufs, n, stats):
        """One window's readings: {"vrms_mv", "freq_mhz", "v_open", "v_clipped", "v_measured",
        "channels": [{"irms_ma", "power_w", "power_mw", "va", "pf_x1000", "direction", "open",
        "clipped"}, ...]} with None for what was not measured. Without a measured voltage, va and
        power_w assume nominal_v and unity power factor and direction is UNKNOWN."""
        dt_us = stats[0] / (n - 1)
        skew_us = stats[1] / (n * len(bufs))  # spacing of consecutive reads within a set
        scans = [_scan(b, n) for b in bufs]
        out = {"vrms_mv": None, "freq_mhz": None, "v_open": False, "v_clipped": False, "v_measured": False}
        ref = self._voltage(bufs[0], n, scans[0], dt_us, out) if self.vt else None
        first = 1 if self.vt else 0
        out["channels"] = [self._current(bufs, n, first + k, scans[first + k], cal, ref, dt_us, skew_us)
                           for k, cal in enumerate(self.cts)]
        return out

    def _voltage(self, buf, n, scan, dt_us, out):
        """Fill out's voltage fields; return (window, mean_uv, vrms_mv, freq_hz) if usable, else None."""
        vt = self.vt
        m0, lo, hi, n_out = scan
        out["v_open"], out["v_clipped"] = adc_status(lo, hi, n_out, n)
        if out["v_open"]:
            return None
        win, cycles = self._window_of(buf, n, scan, dt_us)
        mu, ms = _moments(buf, win, m0)
        vrms_mv = _milli(ms - mu * mu, vt.v_per_v, vt.offset_mv)
        if vrms_mv < vt.floor_mv:
            out["vrms_mv"] = 0
            return None  # no usable reference: each CT trims on its own crossings
        out["v_measured"] = True
        out["vrms_mv"] = int(vrms_mv + 0.5)
        freq_hz = self.freq_hz
        if cycles:
            freq_hz = cycles * 1e6 / (win[4] * dt_us)
            out["freq_mhz"] = int(freq_hz * 1000 + 0.5)
        return win, m0 + mu, vrms_mv, freq_hz

    def _current(self, bufs, n, pos, scan, cal, ref, dt_us, skew_us):
        """The reading of the CT whose samples are bufs[pos]; ref is what _voltage() returned."""
        row = {"irms_ma": 0, "power_w": 0, "power_mw": 0, "va": 0, "pf_x1000": 0, "direction": UNKNOWN}
        buf = bufs[pos]
        m0, lo, hi, n_out = scan
        row["open"], row["clipped"] = adc_status(lo, hi, n_out, n)
        if row["open"]:
            return row  # an unplugged CT reads 0, never a phantom current
        win = ref[0] if ref else self._window_of(buf, n, scan, dt_us)[0]
        mu, ms = _moments(buf, win, m0)
        irms_ma = _milli(ms - mu * mu, cal.a_per_v, cal.offset_ma)
        if irms_ma < cal.floor_ma:
            return row
        row["irms_ma"] = int(irms_ma + 0.5)
        if ref:
            win, vmean, vrms_mv, freq_hz = ref
            # Where, in voltage-sample units, the voltage stands at the instant this CT's sample k
            # stands for: later by the read skew, shifted by the two sensors' phase leads.
            lead_us = (cal.phase_deg - self.vt.phase_deg) * 1e6 / (360 * freq_hz)
            shift = (pos * skew_us + lead_us) / dt_us
            p_uv2 = _cross_mean(buf, bufs[0], n, win, m0 + mu, vmean, shift)
            power_mw = p_uv2 * cal.a_per_v * self.vt.v_per_v * 1e-9
            va = vrms_mv * irms_ma / 1e6
            row["pf_x1000"] = min(1000, int(abs(power_mw) / va + 0.5))
            row["direction"] = IMPORT if power_mw > 0 else EXPORT if power_mw < 0 else UNKNOWN
        else:
            va = self.nominal_v * irms_ma / 1000
            power_mw = va * 1000
        # W and VA rounded from whole mW and mVA, so that at unity power factor they agree exactly.
        row["power_mw"] = power_mw = int(math.floor(power_mw + 0.5))
        row["power_w"] = (power_mw + 500) // 1000
        row["va"] = (int(math.floor(va * 1000 + 0.5)) + 500) // 1000
        return row


class EnergyCounter:
    """Import and export energy per channel, integrated from (power, elapsed time); never decreases.

    Kept in integer mWh plus a sub-mWh remainder in uJ (mW x ms), so nothing is lost between calls.
    The app persists to_dict() and restores with from_dict() across reboots.
    """

    UJ_PER_MWH = 3_600_000

    def __init__(self, n_channels, max_gap_ms=60_000):
        self.max_gap_ms = max_gap_ms  # a longer gap was not measured: do not extrapolate over it
        self.import_mwh = [0] * n_channels
        self.export_mwh = [0] * n_channels
        self.rem_uj = [[0, 0] for _ in range(n_channels)]  # [import, export]

    def add(self, ch, power_w, elapsed_ms):
        """Integrate power_w (import > 0, export < 0; int or float) over elapsed_ms."""
        if elapsed_ms <= 0:
            return
        power_mw = int(math.floor(power_w * 1000 + 0.5))
        if power_mw == 0:
            return
        d = 0 if power_mw > 0 else 1
        rem = self.rem_uj[ch]
        mwh, rem[d] = divmod(abs(power_mw) * min(elapsed_ms, self.max_gap_ms) + rem[d], self.UJ_PER_MWH)
        totals = self.import_mwh if d == 0 else self.export_mwh
        totals[ch] += mwh

    def energy_wh(self, ch):
        """(import_wh, export_wh) of channel ch, whole Wh."""
        return self.import_mwh[ch] // 1000, self.export_mwh[ch] // 1000

    def to_dict(self):
        return {"import_mwh": list(self.import_mwh), "export_mwh": list(self.export_mwh),
                "rem_uj": [list(r) for r in self.rem_uj]}

    @classmethod
    def from_dict(cls, d, max_gap_ms=60_000):
        """Restore a counter saved by to_dict(); ValueError if the dict is not one."""
        try:
            imp, exp, rem = list(d["import_mwh"]), list(d["export_mwh"]), [list(r) for r in d["rem_uj"]]
        except (KeyError, TypeError):
            raise ValueError("not an energy counter dict")
        ok = len(imp) == len(exp) == len(rem)
        for x in imp + exp + [v for r in rem for v in r]:
            ok = ok and type(x) is int and x >= 0
        for r in rem:
            ok = ok and len(r) == 2 and r[0] < cls.UJ_PER_MWH and r[1] < cls.UJ_PER_MWH
        if not ok:
            raise ValueError("energy counter dict has bad values")
        c = cls(len(imp), max_gap_ms)
        c.import_mwh, c.export_mwh, c.rem_uj = imp, exp, rem
        return c

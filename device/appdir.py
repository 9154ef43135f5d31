"""Which application version the node boots. Lives outside the versioned directories it chooses.

Layout on the node's flash:
    /app/<version>/ghnode/...   one directory per installed firmware version
    /app/active                 the version that runs (text)
    /app/trial                  a newly staged version to try once (written by OTA)
    /app/trial_booted           marker: the trial has been booted and not yet confirmed
A trial boots once. If the firmware confirms it (it connected and ran healthily), it becomes
active; if the node resets before confirming, the next boot rolls back to the active version.
Switching is one small file write, so a power cut leaves either the old or the new choice.
"""
import os

ROOT = "/app"


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def installed(root, version):
    """True when /app/<version> holds the ghnode package (source or compiled)."""
    for name in ("__init__.py", "__init__.mpy"):
        try:
            os.stat("%s/%s/ghnode/%s" % (root, version, name))
            return True
        except OSError:
            pass
    return False


def choose(root=ROOT):
    """The directory to put first on sys.path, or None to run whatever is on the default path."""
    trial = _read(root + "/trial")
    if trial:
        if _read(root + "/trial_booted") or not installed(root, trial):
            # The trial was booted before and never confirmed (or is incomplete): roll back.
            _write(root + "/rolled_back", trial)
            _remove(root + "/trial")
            _remove(root + "/trial_booted")
        else:
            _write(root + "/trial_booted", trial)
            return root + "/" + trial
    active = _read(root + "/active")
    if active and installed(root, active):
        return root + "/" + active
    return None


def confirm(root=ROOT):
    """Make a trial version permanent. Called by the firmware once it runs healthily."""
    trial = _read(root + "/trial_booted")
    if not trial:
        return False
    _write(root + "/active", trial)
    _remove(root + "/trial")
    _remove(root + "/trial_booted")
    return True


def running(root=ROOT):
    """The version this boot runs: the trial if one is being tried, else the active one."""
    return _read(root + "/trial_booted") or _read(root + "/active") or "dev"

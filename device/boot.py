# Runs first on every boot: put the chosen firmware version first on the import path.
import sys

try:
    import appdir

    _dir = appdir.choose()
    if _dir:
        sys.path.insert(0, _dir)
except Exception as e:  # a broken /app must never stop the board from booting into the REPL
    print("boot: cannot choose the app version:", e)

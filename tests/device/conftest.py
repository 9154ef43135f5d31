# On CPython, device/ (boot-time modules such as appdir) is importable as on the board's /lib.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "device"))
